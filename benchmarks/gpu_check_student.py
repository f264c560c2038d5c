"""GPU check, student part: the 0.6B student's training step from a synthetic cache vs the CE-only step.

One process, one random-weight student (Qwen3-0.6B's shape, fp32 weights, bf16 autocast where
``tide-train`` would use it), one synthetic pipeline-B cache of one batch (``tide.testing.synthetic_cache``:
random ids and noise, top-k targets made from random teacher logits by the build's ``sparse_targets``).
For each attention implementation (SDPA, then flex attention, which transformers compiles on first use) and
each mode (``ce``; ``kl``; ``tidal`` on the CompDemo pass), the batch the training data stream collates for
that mode goes to the device, then warm-up steps and timed steps run: ``StudentStep`` forward and loss
under autocast, backward, gradient clipping, AdamW. Reported per variant: first-step seconds (compile
included), median and minimum step seconds, peak memory; per attention, each mode's step ÷ the CE step.
"""

from __future__ import annotations

import statistics
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.gpu_check_common import PartRecord, build_random_model, peak_memory, reset_peak_memory, timed

SHAPES = {
    "real": dict(model=dict(vocab_size=151_936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                            num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40_960,
                            rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151_643,
                            pad_token_id=151_643, eos_token_id=151_645),
                 batch=8, seq_len=512, k=64, shared=151_646, mask=151_669, eos=151_645, warmup=2, steps=5),
    "tiny": dict(model=dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                            pad_token_id=1001, eos_token_id=1001),
                 batch=2, seq_len=64, k=8, shared=1000, mask=1010, eos=1001, warmup=1, steps=2),
}
BLOCK = 32
PROMPT = 32
# (label, mode, comp_demo): the CE baseline and the two cache steps of issue 17's target.
VARIANTS = (("ce", "ce", False), ("kl", "kl", False), ("tidal_compdemo", "tidal", True))
ATTENTIONS = ("sdpa", "flex_attention")


def write_cache(directory: Path, shape: dict[str, Any]) -> Path:
    """A one-batch pipeline-B cache with plain and CompDemo targets at the build's default temperatures."""
    from stages.cache_build.config import PIPELINE_DEFAULTS
    from tide.testing.synthetic_cache import SyntheticCacheSpec, random_base_rows, write_synthetic_cache

    rows = random_base_rows(num_samples=shape["batch"], replicas=1, seq_len=shape["seq_len"], block_size=BLOCK,
                            vocab_size=shape["shared"], eos_token_id=shape["eos"], prompt_len=PROMPT, seed=0)
    gen = torch.Generator().manual_seed(1)
    groups = np.random.default_rng(2)
    vocab = shape["model"]["vocab_size"]
    for row in rows:
        row.target_positions = np.flatnonzero(row.masked)
        row.compdemo_group = groups.integers(0, 2, size=len(row.target_positions)).astype(np.uint8)
        logits = torch.randn(len(row.target_positions), vocab, generator=gen) * 3
        row.teacher_logits = {"plain": logits, "compdemo": logits.roll(1, dims=-1)}
    spec = SyntheticCacheSpec(
        pipeline="shared", student_fingerprint="gpu-check", mask_token_id=shape["mask"], eos_token_id=shape["eos"],
        block_size=BLOCK, max_length=shape["seq_len"], student_vocab_size=vocab, replicas=1,
        passes=("plain", "compdemo"), k=shape["k"], shared_vocab_size=shape["shared"], teacher_vocab_size=vocab,
        temperatures=tuple(PIPELINE_DEFAULTS["shared"]["temperatures"]), value_dtype="float16",
        row_group_rows=shape["batch"], rows_per_shard=shape["batch"],
    )
    return write_synthetic_cache(directory, rows, spec)


def cache_batch(reader: Any, mode: str, comp_demo: bool) -> tuple[Any, Any]:
    """(the StudentStep of ``mode``, the first batch the training stream collates for it)."""
    from stages.train.collate import CollateSpec
    from stages.train.data import CacheStream, StreamConfig, columns_for
    from stages.train.preflight import plan_run
    from stages.train.step import StudentStep
    from tide.losses import LossOptions
    from tide.objective import Objective

    manifest = reader.manifest
    plan = plan_run(manifest, mode=mode, comp_demo=comp_demo, temperature=None)
    student = manifest.student
    spec = CollateSpec(pad_token_id=student.eos_token_id, block_size=student.block_size, pipeline=plan.pipeline,
                       target_pass=plan.target_pass)
    stream = CacheStream(reader, spec, columns_for(plan.pipeline, plan.target_pass),
                         StreamConfig(batch_size=reader.num_rows, shuffle=False))
    batch, _ = next(stream.batches(stream.start_cursor(), epochs=1))
    objective = Objective(mode=mode, options=LossOptions(temperature=plan.temperature),
                          shared_vocab_size=manifest.teacher.shared_vocab_size)
    step = StudentStep(objective, block_size=student.block_size, mask_token_id=student.mask_token_id,
                       pipeline=plan.pipeline)
    return step, batch


def time_steps(model: Any, optimizer: Any, step: Any, batch: Any, device: torch.device, shape: dict) -> dict:
    """Warm-up then timed training steps as ``tide-train`` runs them."""
    from tide.runtime import resolve_mixed_precision

    bf16 = resolve_mixed_precision("auto", device) == "bf16"
    batch = batch.to(device)

    def one_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
            out = step(model, batch, progress=0.5)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reset_peak_memory(device)
    first = timed(device, one_step)[1]
    for _ in range(shape["warmup"] - 1):
        one_step()
    times = [timed(device, one_step)[1] for _ in range(shape["steps"])]
    return {"first_step_s": first, "median_step_s": statistics.median(times), "min_step_s": min(times),
            "steps": len(times), "autocast_bf16": bf16, "masked_positions": int(batch.masked.sum()),
            "peak_memory": peak_memory(device)}


def select_attention(model: Any, attention: str) -> bool:
    model.set_attn_implementation(attention)
    if model.config._attn_implementation != attention:
        raise RuntimeError(f"asked for {attention!r}, the model runs {model.config._attn_implementation!r}")
    return True


def flex_matches_sdpa(model: Any, batch: Any, mask_token_id: int, device: torch.device) -> dict[str, float]:
    """x_t-half hidden states of one no-grad forward with flex attention and with SDPA."""
    from tide.bd3lm import noise_input_ids
    from tide.models.student import bd3lm_hidden_states

    batch = batch.to(device)
    noised = noise_input_ids(batch.input_ids, batch.masked, mask_token_id)
    hidden = {}
    with torch.no_grad():
        for attention in ("flex_attention", "sdpa"):
            select_attention(model, attention)
            hidden[attention] = bd3lm_hidden_states(model, noised, batch.input_ids, block_size=BLOCK).float()
    diff = (hidden["flex_attention"] - hidden["sdpa"]).abs()
    return {"max_abs_diff": float(diff.max()), "max_abs": float(hidden["sdpa"].abs().max())}


def run(name: str, record: PartRecord, device: torch.device, tiny: bool) -> None:
    from cache_schema.reader import CacheReader
    from tide.models.a2d_qwen3 import A2DQwen3Config, A2DQwen3LMHeadModel

    shape = SHAPES["tiny" if tiny else "real"]
    record.set("settings", {k: v for k, v in shape.items() if k != "model"} | {"block_size": BLOCK, **shape["model"]})
    with tempfile.TemporaryDirectory() as tmp:
        reader = record.attempt("cache", lambda: CacheReader(write_cache(Path(tmp) / "cache", shape)), needs=5)
        if reader is None:
            return
        torch.manual_seed(0)
        model = record.attempt("build_model", lambda: build_random_model(
            A2DQwen3LMHeadModel, A2DQwen3Config(**shape["model"]), device, torch.float32), needs=5)
        if model is None:
            return
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
        prepared = {label: record.attempt(f"batch.{label}", lambda m=mode, c=comp: cache_batch(reader, m, c))
                    for label, mode, comp in VARIANTS}
        results: dict[str, dict] = {}
        for attention in ATTENTIONS:
            selected = record.attempt(f"{attention}.select", lambda a=attention: select_attention(model, a))
            if not selected:
                continue
            for label, _, _ in VARIANTS:
                if prepared[label] is None:
                    continue
                step, batch = prepared[label]
                results[f"{attention}.{label}"] = record.measure(
                    f"{attention}.{label}",
                    lambda s=step, b=batch: time_steps(model, optimizer, s, b, device, shape), needs=5)
        ratios = {}
        for attention in ATTENTIONS:
            base = results.get(f"{attention}.ce")
            for label, _, _ in VARIANTS[1:]:
                other = results.get(f"{attention}.{label}")
                if base and other:
                    ratios[f"{attention}.{label}_over_ce"] = other["median_step_s"] / base["median_step_s"]
        record.set("ratios", ratios)
        if prepared["ce"] is not None:
            record.measure("flex_vs_sdpa_forward", lambda: flex_matches_sdpa(model, prepared["ce"][1], shape["mask"], device),
                           needs=5)
