"""The trainer: accelerate-driven loop over cache batches, from a :class:`TrainConfig` to a saved student.

Order of work: check the inputs (cache directory, student path) → claim the output directory (a new run,
a resume, or a refusal: :mod:`stages.train.run_dir`) → open the cache and plan the run (mode / pass /
temperature it must serve) → load the student tokenizer and check its fingerprint against the cache → load
the student (optionally with LoRA adapters) → AdamW + warm-up/decay schedule → ``Accelerator.prepare`` →
on resume, refuse changed settings (:mod:`stages.train.resume_check`) and restore model, optimizer,
scheduler, RNG and data cursor → optimizer steps with gradient accumulation, clipping, a refusal of any
non-finite loss or gradient (naming the batch's rows), logging to the trackers, checkpoints by steps and by
wall time, held-out validation → final checkpoint, the portable student with its model card, the loss
curve, optionally the Hub upload. No teacher is ever loaded: every teacher quantity comes from the cache.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, ProjectConfiguration, broadcast_object_list, set_seed
from torch.optim.lr_scheduler import LambdaLR
from transformers import AutoTokenizer

from cache_schema.files import atomic_write_json
from cache_schema.reader import CacheReader
from stages.train.checkpoint import (
    CONFIG_FILE,
    checkpoint_path,
    load_checkpoint,
    read_trainer_state,
    save_checkpoint,
)
from stages.train.checkpoint_eval import EVAL_DIR, STUDENT_DIR, require_lm_eval, run_eval_tasks
from stages.train.collate import CollateSpec
from stages.train.config import TrainConfig
from stages.train.data import CacheStream, StreamConfig, columns_for
from stages.train.loader import batch_loader
from stages.train.lora import apply_lora, save_adapters_and_merge
from stages.train.metrics import plot_loss_curve, truncate_metrics
from stages.train.preflight import (
    RunPlan,
    cache_fingerprint,
    check_cache_path,
    check_student_layout,
    check_student_path,
    check_student_tokenizer,
    plan_run,
)
from stages.train.publish import CardFacts, push_to_hub, save_student, write_model_card
from stages.train.resume_check import RunFacts, check_resume
from stages.train.run_dir import RunStart, claim_output, write_run_file
from stages.train.step import StudentStep
from stages.train.tracking import ProgressBar, flat_config, grouped, tracker_init_kwargs, trackers_for
from stages.train.validation import evaluate, holdout_fraction, split_stream_class
from stages.train.window import LogWindow, NonFiniteError
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
    plan = plan_run(manifest, mode=config.mode, comp_demo=config.comp_demo, temperature=config.temperature or None,
                    cache_dir=reader.path, teacher_targets=config.teacher_targets)
    tokenizer = AutoTokenizer.from_pretrained(config.student)
    check_student_tokenizer(manifest, tokenizer_fingerprint(tokenizer), student=config.student)
    return plan, tokenizer


def _claim(config: TrainConfig, state: PartialState) -> RunStart:
    """The main process claims the output directory; every process gets its decision (or its refusal)."""
    payload: list[Any] = [None, None]
    if state.is_main_process:
        try:
            start = claim_output(Path(config.output), resume=config.resume, resume_from=config.resume_from,
                                 overwrite=config.overwrite)
            write_run_file(Path(config.output), start)
            payload = [start, None]
        except ValueError as exc:
            payload = [None, exc]
    if state.num_processes > 1:
        broadcast_object_list(payload, from_process=0)
    if payload[1] is not None:
        raise payload[1]
    return payload[0]


def _any_process(accelerator: Accelerator, flag: bool) -> bool:
    """Whether ``flag`` holds on any process (one tiny all-reduce when there are several)."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)


def train(
    config: TrainConfig,
    *,
    stop_after_steps: int | None = None,
    stream_class: type[CacheStream] = CacheStream,
    after_step: Callable[[int], None] | None = None,
    hub_api: Any = None,
) -> TrainResult:
    """Run training as configured. ``stop_after_steps`` ends the run (after its checkpoint, if one is
    due) once that many optimizer steps are done, as a pre-emption would; ``--resume`` continues it.
    ``after_step(step)`` runs after each optimizer step and its checkpoint (crash drills use it).
    ``stream_class`` is the data stream over the cache: a subclass may change where a batch's rows come
    from (e.g. teacher targets computed in-step for an online comparison) with order, collation and
    everything else unchanged. ``hub_api`` replaces ``huggingface_hub.HfApi`` for ``--push-to-hub``."""
    config.validate()
    output = Path(config.output)
    check_cache_path(config.cache)
    check_student_path(config.student)
    if config.eval_tasks:
        require_lm_eval()
    state = PartialState()
    start = _claim(config, state)
    resume_step = read_trainer_state(start.checkpoint)[0] if start.checkpoint else 0
    logs = output / "logs"
    if state.is_main_process:
        truncate_metrics(logs / "metrics.jsonl", resume_step)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.grad_accum,
        mixed_precision=resolve_mixed_precision(config.mixed_precision),
        log_with=trackers_for(config.report_to, logs / "metrics.jsonl") or None,
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(logs / "tensorboard")),
    )
    set_seed(config.seed)
    # every row group read is checked against validate's content invariants once (docs/reliability.md)
    reader = CacheReader(config.cache, checksums="open" if config.verify_checksums else "lazy", content_checks=True)
    manifest = reader.manifest
    plan, tokenizer = prepare_run(config, reader)
    config = config.for_pipeline(manifest.pipeline)  # per-pipeline defaults: batch size, TIDAL weight

    weights_dtype = torch.bfloat16 if config.weights_dtype == "bf16" else torch.float32
    model = load_student(config.student, dtype=weights_dtype, attn_implementation=config.attn_implementation)
    check_student_layout(manifest, mask_token_id=tokenizer.mask_token_id,
                         vocab_rows=model.get_output_embeddings().weight.shape[0], max_length=config.truncate_length)
    lora = None
    if config.lora_r:
        lora = apply_lora(model, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
                          targets=config.lora_targets, base_path=config.student)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora is not None:
            model.enable_input_require_grads()
    model.train()

    fraction = holdout_fraction(manifest, config.val_fraction)
    spec = CollateSpec(pad_token_id=manifest.student.eos_token_id, block_size=manifest.student.block_size,
                       pipeline=plan.pipeline, target_pass=plan.target_pass, max_length=config.truncate_length)
    columns = columns_for(plan.pipeline, plan.target_pass)

    def stream_config(shuffle: bool) -> StreamConfig:
        return StreamConfig(seed=config.seed, batch_size=config.batch_size, rank=accelerator.process_index,
                            world_size=accelerator.num_processes, shuffle_window=config.shuffle_window,
                            replica_cycle=tuple(config.replica_cycle), shuffle=shuffle)

    train_class = split_stream_class(stream_class, fraction, "train") if fraction else stream_class
    stream = train_class(reader, spec, columns, stream_config(True))
    val_stream = None
    if fraction and config.val_every:
        val_stream = split_stream_class(stream_class, fraction, "val")(reader, spec, columns, stream_config(False))
        logger.info("validation: %d held-out rows (fraction %g by sample key), every %d steps",
                    len(val_stream.order(0)), fraction, config.val_every)
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
                            tail=config.tail, tail_uniform_share=config.tail_uniform_share,
                            calm_clamp=config.calm_clamp),
        ce_weight=config.ce_weight, distill_weight=config.distill_weight,
        shared_vocab_size=manifest.teacher.shared_vocab_size, head_chunk_size=config.loss_chunk_size,
    )
    step_fn = StudentStep(objective, block_size=manifest.student.block_size,
                          mask_token_id=manifest.student.mask_token_id, pipeline=plan.pipeline)

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr,
        betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps, weight_decay=config.weight_decay,
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

    fingerprint = cache_fingerprint(config.cache)
    facts = RunFacts(cache_fingerprint=fingerprint, temperature=plan.temperature, total_steps=total_steps,
                     processes=accelerator.num_processes)
    options = config.to_dict()
    step, cursor = 0, stream.start_cursor(0)
    if start.checkpoint is not None:
        saved_step, _, saved_state = read_trainer_state(start.checkpoint)
        saved_options = json.loads((start.checkpoint / CONFIG_FILE).read_text())
        check_resume(saved_options, saved_state.get("facts", {}), options, facts, allowed=config.allow_changed,
                     where=f"from {start.checkpoint}")
        step, cursor, _ = load_checkpoint(accelerator, start.checkpoint, scheduler)
    elif start.restarted and (output / CONFIG_FILE).is_file():
        # an attempt killed before its first checkpoint: it starts over, with the same settings
        check_resume(json.loads((output / CONFIG_FILE).read_text()), facts.to_dict(), options, facts,
                     allowed=config.allow_changed, where=f"the run in {output}")
    if accelerator.is_main_process:
        atomic_write_json(output / CONFIG_FILE, options)
    run_name = config.run_name or output.resolve().name
    accelerator.init_trackers(config.project, config=flat_config(options),
                              init_kwargs=tracker_init_kwargs(config.report_to, run_name=run_name,
                                                              resume_step=step))
    logger.info("training %s on %s: %d optimizer steps (mode %s, pass %s, T=%s), starting at step %d, run %s",
                config.student, config.cache, total_steps, config.mode, plan.target_pass, plan.temperature, step,
                start.run_id)

    window = LogWindow()

    def checkpoint() -> None:
        window.check_finite(accelerator, config.cache)  # nothing computed from a non-finite value is saved
        _check_parameters_finite(accelerator, model, step)
        save_checkpoint(accelerator, output, step=step, cursor=cursor, scheduler=scheduler, run_id=start.run_id,
                        config=options, extra={"facts": facts.to_dict(), "mode": config.mode},
                        keep=config.keep_checkpoints)
        if config.eval_tasks:
            _eval_checkpoint(accelerator, model, tokenizer, lora, output, step, config)

    last: dict[str, float] = {}
    step_rows: list[str] = []
    clock = time.perf_counter()
    last_save_time = time.monotonic()
    last_saved = step if start.checkpoint is not None else -1
    stopped_early = False
    bar = ProgressBar(total=total_steps, initial=step, enabled=config.progress and accelerator.is_main_process)
    try:
        if step < total_steps:
            for batch, next_cursor in batch_loader(stream, cursor, epochs=epoch_limit, workers=config.data_workers):
                batch = batch.to(accelerator.device)
                step_rows.extend(batch.provenance)
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        out = step_fn(model, batch, progress=step / total_steps)
                    accelerator.backward(out.loss)
                    if accelerator.sync_gradients:
                        limit = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
                        window.add_grad_norm(step + 1, accelerator.clip_grad_norm_(model.parameters(), limit),
                                             step_rows)
                    optimizer.step()
                    if accelerator.sync_gradients:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                window.add(step + 1, out.loss, {**{f"loss_{k}": v for k, v in out.terms.items()}, **out.stats},
                           list(batch.provenance), batch.num_tokens)
                if not accelerator.sync_gradients:
                    continue
                step += 1
                cursor = next_cursor
                step_rows = []
                bar.update(epoch=cursor.epoch)
                logging_step = step % config.log_every == 0 or step == total_steps
                if logging_step:  # the window's one host sync
                    window.check_finite(accelerator, config.cache)
                    last = _log_window(accelerator, bar, step, window, clock, scheduler, cursor)
                    window, clock = LogWindow(), time.perf_counter()
                if val_stream is not None and (step % config.val_every == 0 or step == total_steps):
                    _validate(accelerator, bar, model, step_fn, val_stream, step, total_steps, config.val_batches)
                by_steps = bool(config.save_every) and step % config.save_every == 0
                # the clock is compared at logging steps only: with several processes the decision is a collective
                by_time = logging_step and bool(config.save_every_minutes) and _any_process(
                    accelerator, time.monotonic() - last_save_time >= 60.0 * config.save_every_minutes)
                if (by_steps or by_time) and step < total_steps:
                    checkpoint()
                    last_saved, last_save_time = step, time.monotonic()
                if after_step is not None:
                    after_step(step)
                if step >= total_steps:
                    break
                if stop_after_steps is not None and step >= stop_after_steps:
                    stopped_early = True
                    break
        if last_saved != step:
            checkpoint()
        if not stopped_early:
            _check_parameters_finite(accelerator, model, step)
            _finish(accelerator, model, tokenizer, lora, output, config, plan, manifest, fingerprint, step,
                    total_steps, last, hub_api)
    finally:
        bar.close()
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return TrainResult(steps=step, total_steps=total_steps, output=output, last_metrics=last,
                       stopped_early=stopped_early)


def _check_parameters_finite(accelerator: Accelerator, model: Any, step: int) -> None:
    """Never save a student with NaN or infinite weights."""
    bad = [name for name, p in accelerator.unwrap_model(model).named_parameters() if not torch.isfinite(p).all()]
    if _any_process(accelerator, bool(bad)):
        raise NonFiniteError(f"step {step}: parameters {', '.join(bad[:5]) or 'on another process'} are not "
                             "finite; nothing was saved — lower --lr or check the cache with tide-cache validate")


def _log_window(accelerator, bar, step, window: LogWindow, clock, scheduler, cursor) -> dict[str, float]:
    """The window's means over micro-batches and processes, logged to every tracker."""
    record, tokens = window.read(accelerator)
    record["tokens_per_s"] = tokens / max(time.perf_counter() - clock, 1e-9)
    record["lr"] = float(scheduler.get_last_lr()[0])
    record["epoch"] = cursor.epoch
    accelerator.log(grouped("train", record), step=step)
    bar.show(loss=record.get("loss", math.nan), tokens_per_s=record["tokens_per_s"])
    if accelerator.is_main_process:
        bar.write(f"step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in sorted(record.items())))
    return record


def _validate(accelerator, bar, model, step_fn, val_stream, step, total_steps, max_batches) -> None:
    values = evaluate(accelerator, model, step_fn, val_stream, progress=step / total_steps, max_batches=max_batches)
    if values:
        accelerator.log(grouped("val", values), step=step)
        if accelerator.is_main_process:
            bar.write(f"step {step} validation: " + " ".join(f"{k}={v:.4g}" for k, v in sorted(values.items())))


def _unwrapped_student(accelerator: Accelerator, model: Any) -> tuple[Any, dict]:
    """The trained student module and its gathered state dict (keys as ``save_pretrained`` names them)."""
    state_dict = {key.removeprefix("model."): value for key, value in accelerator.get_state_dict(model).items()}
    return accelerator.unwrap_model(model).model, state_dict


def _eval_checkpoint(accelerator, model, tokenizer, lora, output: Path, step: int, config: TrainConfig) -> None:
    """Export the checkpoint's student and run ``--eval-tasks`` on it; log the scores under ``eval/``."""
    accelerator.wait_for_everyone()
    where = checkpoint_path(output, step)
    if accelerator.is_main_process:
        student, state_dict = _unwrapped_student(accelerator, model)
        if lora is not None:  # the adapters stay in training: export base + adapters merged, from a copy
            student = copy.deepcopy(lora).merge_and_unload()
            state_dict = None
        save_student(student, tokenizer, where / STUDENT_DIR, state_dict=state_dict)
        device = "cuda" if accelerator.device.type == "cuda" else "cpu"
        scores = run_eval_tasks(where / STUDENT_DIR, config.eval_tasks, where / EVAL_DIR, limit=config.eval_limit,
                                device=device)
        accelerator.log(grouped("eval", scores), step=step)
    accelerator.wait_for_everyone()


def _finish(accelerator, model, tokenizer, lora, output: Path, config: TrainConfig, plan: RunPlan, manifest,
            fingerprint: str, step: int, total_steps: int, last: dict[str, float], hub_api: Any) -> None:
    """The portable student (merged, with adapters beside it, for LoRA), its model card, the loss curve and
    the optional upload."""
    accelerator.wait_for_everyone()
    student, state_dict = _unwrapped_student(accelerator, model)
    if not accelerator.is_main_process:
        return
    if lora is not None:
        student, state_dict = save_adapters_and_merge(lora, output, tokenizer), None
    save_student(student, tokenizer, output, state_dict=state_dict, save_function=accelerator.save)
    write_model_card(output, CardFacts(
        mode=config.mode, comp_demo=config.comp_demo, temperature=plan.temperature, pipeline=manifest.pipeline,
        cache_fingerprint=fingerprint, teacher=manifest.teacher.name,
        teacher_weights=manifest.teacher.weights_fingerprint, base_student=config.student, steps=step,
        total_steps=total_steps, final_losses={k: v for k, v in last.items() if k.startswith("loss")},
        lora=f"r={config.lora_r}, alpha={config.lora_alpha:g}, targets {','.join(config.lora_targets)}"
        if config.lora_r else None,
    ))
    plot_loss_curve(output / "logs" / "metrics.jsonl", output / "logs" / "loss_curve.png")
    if config.push_to_hub:
        push_to_hub(output, config.hub_model_id, private=config.hub_private, api=hub_api)
