"""The trainer: accelerate-driven loop over cache batches, from a :class:`TrainConfig` to a saved student.

Order of work: open the cache (manifest version check) → plan the run (mode / pass / temperature the
cache must serve) → load the student tokenizer and check its fingerprint against the cache → load the
student → AdamW + warm-up/decay schedule → ``Accelerator.prepare`` → optionally resume the latest
checkpoint (model, optimizer, scheduler, RNG, data cursor) → optimizer steps with gradient accumulation,
clipping, logging and checkpoints → final checkpoint, ``save_pretrained`` of the student and its tokenizer,
loss-curve PNG. No teacher is ever loaded: every teacher quantity comes from the cache.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from torch.optim.lr_scheduler import LambdaLR
from transformers import AutoTokenizer

from cache_schema.reader import CacheReader
from stages.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from stages.train.collate import CollateSpec
from stages.train.config import TrainConfig
from stages.train.data import CacheStream, StreamConfig, columns_for
from stages.train.metrics import MetricsLogger, plot_loss_curve
from stages.train.preflight import RunPlan, check_student_layout, check_student_tokenizer, plan_run
from stages.train.step import StudentStep
from tide.losses import LossOptions
from tide.models.student import BD3LMStudent, load_student
from tide.objective import Objective
from tide.runtime import resolve_mixed_precision
from tide.tokenizer_fingerprint import tokenizer_fingerprint

logger = logging.getLogger(__name__)

UNBOUNDED_EPOCHS = 1 << 30


@dataclass
class TrainResult:
    """What a run did: optimizer steps reached, planned total, the output directory, last logged metrics."""

    steps: int
    total_steps: int
    output: Path
    last_metrics: dict[str, float]
    stopped_early: bool = False


def lr_lambda(total_steps: int, warmup_steps: int, schedule: str):
    """Multiplier of the peak LR after ``step`` optimizer steps: linear warm-up, then cosine/linear/constant."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        span = max(total_steps - warmup_steps, 1)
        progress = min(max(step - warmup_steps, 0) / span, 1.0)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor


def total_optimizer_steps(stream: CacheStream, config: TrainConfig) -> tuple[int, int]:
    """(optimizer steps, epochs to iterate): ``max_steps`` wins over ``epochs`` when set."""
    if config.max_steps:
        cycle = len(config.replica_cycle) or stream.num_replicas
        if all(stream.micro_batches_per_epoch(epoch) == 0 for epoch in range(cycle)):
            raise ValueError(
                f"no epoch of the cache has enough rows for one micro-batch of {config.batch_size} rows per "
                "process; lower --batch_size or use a larger cache"
            )
        return config.max_steps, UNBOUNDED_EPOCHS
    micro = sum(stream.micro_batches_per_epoch(epoch) for epoch in range(config.epochs))
    return micro // config.grad_accum, config.epochs


def prepare_run(config: TrainConfig, reader: CacheReader) -> tuple[RunPlan, object]:
    """Every refusal that needs no model weights: mode vs cache, tokenizer fingerprint, layout."""
    manifest = reader.manifest
    plan = plan_run(manifest, mode=config.mode, comp_demo=config.comp_demo, temperature=config.temperature or None)
    tokenizer = AutoTokenizer.from_pretrained(config.student)
    check_student_tokenizer(manifest, tokenizer_fingerprint(tokenizer), student=config.student)
    return plan, tokenizer


def train(
    config: TrainConfig,
    *,
    stop_after_steps: int | None = None,
    stream_class: type[CacheStream] = CacheStream,
) -> TrainResult:
    """Run training as configured. ``stop_after_steps`` ends the run (after its checkpoint, if one is
    due) once that many optimizer steps are done, as a pre-emption would; ``--resume`` continues it.
    ``stream_class`` is the data stream over the cache: a subclass may change where a batch's rows come
    from (e.g. teacher targets computed in-step for an online comparison) with order, collation and
    everything else unchanged."""
    config.validate()
    output = Path(config.output)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.grad_accum,
        mixed_precision=resolve_mixed_precision(config.mixed_precision),
    )
    set_seed(config.seed)
    reader = CacheReader(config.cache)
    manifest = reader.manifest
    plan, tokenizer = prepare_run(config, reader)

    model = load_student(config.student, dtype=torch.float32, attn_implementation=config.attn_implementation)
    check_student_layout(manifest, mask_token_id=tokenizer.mask_token_id,
                         vocab_rows=model.get_output_embeddings().weight.shape[0], max_length=config.truncate_length)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()

    stream = stream_class(
        reader,
        CollateSpec(pad_token_id=manifest.student.eos_token_id, block_size=manifest.student.block_size,
                    pipeline=plan.pipeline, target_pass=plan.target_pass, max_length=config.truncate_length),
        columns_for(plan.pipeline, plan.target_pass),
        StreamConfig(seed=config.seed, batch_size=config.batch_size, rank=accelerator.process_index,
                     world_size=accelerator.num_processes, shuffle_window=config.shuffle_window,
                     replica_cycle=tuple(config.replica_cycle)),
    )
    total_steps, epoch_limit = total_optimizer_steps(stream, config)
    if total_steps < 1:
        raise ValueError(
            f"the cache has too few rows ({reader.num_rows}) for one optimizer step of batch_size "
            f"{config.batch_size} x grad_accum {config.grad_accum} x {accelerator.num_processes} processes"
        )
    warmup = config.warmup_steps or int(config.warmup_ratio * total_steps)
    objective = Objective(
        mode=config.mode,
        options=LossOptions(temperature=plan.temperature, axis=config.tidal_axis, decay=config.tidal_decay,
                            lambda0=config.lambda0, lambda_max=config.lambda_max, weighting=config.tidal_weight,
                            tail=config.tail, tail_uniform_share=config.tail_uniform_share),
        ce_weight=config.ce_weight, distill_weight=config.distill_weight,
        shared_vocab_size=manifest.teacher.shared_vocab_size, head_chunk_size=config.loss_chunk_size,
    )
    step_fn = StudentStep(objective, block_size=manifest.student.block_size,
                          mask_token_id=manifest.student.mask_token_id, pipeline=plan.pipeline)

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps,
        weight_decay=config.weight_decay,
    )
    scheduler = LambdaLR(optimizer, lr_lambda(total_steps, warmup, config.lr_schedule))
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = config.batch_size
    # The BD3LM forward must run inside the prepared (DDP) module's forward, or gradients are not synced.
    model, optimizer = accelerator.prepare(BD3LMStudent(model), optimizer)
    if accelerator.gradient_accumulation_steps != config.grad_accum:
        raise ValueError(
            f"--grad_accum {config.grad_accum} disagrees with the launcher's gradient accumulation "
            f"({accelerator.gradient_accumulation_steps}, e.g. the DeepSpeed config); set them equal"
        )
    accelerator.register_for_checkpointing(scheduler)

    step, cursor = 0, stream.start_cursor(0)
    if config.resume:
        found = latest_checkpoint(output)
        if found is None:
            logger.warning("--resume: no checkpoint under %s, starting from scratch", output)
        else:
            step, cursor, _ = load_checkpoint(accelerator, found)
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        (output / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    metrics = MetricsLogger(output / "logs", enabled=accelerator.is_main_process)
    logger.info("training %s on %s: %d optimizer steps (mode %s, pass %s, T=%s), starting at step %d",
                config.student, config.cache, total_steps, config.mode, plan.target_pass, plan.temperature, step)

    last: dict[str, float] = {}
    sums: dict[str, float] = {}
    micro_batches = 0
    tokens = 0
    clock = time.perf_counter()
    last_saved = -1
    stopped_early = False
    if step < total_steps:
        for batch, next_cursor in stream.batches(cursor, epochs=epoch_limit):
            batch = batch.to(accelerator.device)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    out = step_fn(model, batch, progress=step / total_steps)
                accelerator.backward(out.loss)
                grad_norm = None
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            micro_batches += 1
            tokens += batch.num_tokens
            sums["loss"] = sums.get("loss", 0.0) + float(out.loss.detach())
            for name, value in {**{f"loss_{k}": v for k, v in out.terms.items()}, **out.stats}.items():
                sums[name] = sums.get(name, 0.0) + value
            if not accelerator.sync_gradients:
                continue
            step += 1
            cursor = next_cursor
            if step % config.log_every == 0 or step == total_steps:
                last = _log_window(accelerator, metrics, step, sums, micro_batches, tokens, clock, scheduler,
                                   grad_norm, cursor)
                sums, micro_batches, tokens, clock = {}, 0, 0, time.perf_counter()
            if config.save_every and step % config.save_every == 0:
                save_checkpoint(accelerator, output, step=step, cursor=cursor, keep=config.keep_checkpoints,
                                extra={"mode": config.mode, "total_steps": total_steps})
                last_saved = step
            if step >= total_steps:
                break
            if stop_after_steps is not None and step >= stop_after_steps:
                stopped_early = True
                break
    if last_saved != step:
        save_checkpoint(accelerator, output, step=step, cursor=cursor, keep=config.keep_checkpoints,
                        extra={"mode": config.mode, "total_steps": total_steps})
    if not stopped_early:
        _save_student(accelerator, model, tokenizer, output)
        if accelerator.is_main_process:
            plot_loss_curve(metrics.jsonl_path, output / "logs" / "loss_curve.png")
    metrics.close()
    accelerator.wait_for_everyone()
    return TrainResult(steps=step, total_steps=total_steps, output=output, last_metrics=last,
                       stopped_early=stopped_early)


def _log_window(accelerator, metrics, step, sums, micro_batches, tokens, clock, scheduler, grad_norm, cursor):
    """Average the window's sums over micro-batches and processes; write JSONL + TensorBoard."""
    names = sorted(sums)
    local = torch.tensor([sums[n] for n in names] + [float(micro_batches), float(tokens)],
                         dtype=torch.float64, device=accelerator.device)
    total = accelerator.reduce(local, reduction="sum") if accelerator.num_processes > 1 else local
    count = max(float(total[-2]), 1.0)
    elapsed = max(time.perf_counter() - clock, 1e-9)
    record = {name: float(total[i]) / count for i, name in enumerate(names)}
    record["tokens_per_s"] = float(total[-1]) / elapsed
    record["lr"] = float(scheduler.get_last_lr()[0])
    record["epoch"] = cursor.epoch
    if grad_norm is not None:
        record["grad_norm"] = float(grad_norm)
    metrics.log(step, record)
    logger.info("step %d: %s", step, " ".join(f"{k}={v:.4g}" for k, v in sorted(record.items())))
    return record


def _save_student(accelerator, model, tokenizer, output: Path) -> None:
    """``save_pretrained`` of the trained student (gathered state dict) and its tokenizer into ``output``."""
    accelerator.wait_for_everyone()
    state_dict = {key.removeprefix("model."): value for key, value in accelerator.get_state_dict(model).items()}
    unwrapped = accelerator.unwrap_model(model).model
    if accelerator.is_main_process:
        unwrapped.save_pretrained(str(output), state_dict=state_dict, save_function=accelerator.save)
        tokenizer.save_pretrained(str(output))
        logger.info("trained student saved to %s", output)
