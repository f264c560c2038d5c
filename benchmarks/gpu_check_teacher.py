"""GPU check, teacher parts: the build's batches through a random-weight teacher at real shape.

``llada2_teacher`` (pipeline A, chunk log-probs) and ``wedlm_teacher`` (pipeline B, top-k targets). The
samples are synthetic :class:`~stages.cache_build.preparation.PreparedSample` objects at the build's
lengths — student ``max_length``, teacher ``teacher_max_length`` (the pipeline's paper default) — with a
student prompt that is not trained and a teacher template prefix before the aligned part, so tokenisation
and alignment (CPU work measured by ``bench_build``) need no tokenizer files; everything after them is the
build's own code: :class:`~stages.cache_build.shard_builder.ShardBuilder.build` (noise, requests,
``pack_batches``, ``pad_batch``, the pipeline's ``run_batch`` on :class:`~tide.models.teacher.TeacherRunner`,
rows) with every other setting at its ``tide-cache build`` default.
"""

from __future__ import annotations

import functools
import statistics
from typing import Any

import numpy as np
import torch

from benchmarks.gpu_check_common import PartRecord, build_random_model, peak_memory, reset_peak_memory, timed
from stages.cache_build.config import PIPELINE_DEFAULTS, BuildConfig
from stages.cache_build.passes import pass_kinds
from stages.cache_build.pipelines import build_pipeline
from stages.cache_build.preparation import PreparedSample
from stages.cache_build.shard_builder import ShardBuilder, target_settings
from tide.alignment.chunks import ChunkTable
from tide.models.teacher import TeacherRunner
from tide.runtime import default_dtype
from tide.targets import sparse_targets

# Model shapes: LLaDA2MoeConfig's defaults are LLaDA2.0-mini's; WeDLM-8B is Qwen3-8B's shape.
LLADA2 = {"real": {}, "tiny": dict(
    vocab_size=1024, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2, n_group=2,
    topk_group=1, pad_token_id=1000, eos_token_id=1001, mask_token_id=1002)}
WEDLM = {"real": dict(
    vocab_size=151_936, hidden_size=4096, intermediate_size=12_288, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=40_960, rope_theta=1e6, rms_norm_eps=1e-6,
    tie_word_embeddings=False, bos_token_id=151_643, pad_token_id=151_643, eos_token_id=151_645), "tiny": dict(
    vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, tie_word_embeddings=False, pad_token_id=1000, eos_token_id=1001)}
# Synthetic data: samples, student ids below this, untrained prompt tokens, teacher template prefix.
DATA = {
    "llada2_teacher": {"real": dict(samples=48, student_vocab=151_646, prompt=64, prefix=8),
                       "tiny": dict(samples=6, student_vocab=1000, prompt=8, prefix=4)},
    "wedlm_teacher": {"real": dict(samples=32, student_vocab=151_646, prompt=64, prefix=8),
                      "tiny": dict(samples=6, student_vocab=1000, prompt=8, prefix=4)},
}
TINY_BUILD = dict(max_length=64, batch_tokens=512, lm_head_chunk=64)
TINY_TEACHER_LENGTH = {"cross": 96, "shared": 80}


# ------------------------------------------------------------------------------------------------ models


def llada2_model(shape: dict, device: torch.device, dtype: torch.dtype) -> tuple[Any, int | None]:
    from tide.models.llada2_moe import LLaDA2MoeConfig, LLaDA2MoeForCausalLM

    return build_random_model(LLaDA2MoeForCausalLM, LLaDA2MoeConfig(**shape), device, dtype).eval(), None


def wedlm_model(shape: dict, device: torch.device, dtype: torch.dtype) -> tuple[Any, int | None]:
    """Qwen3 carrying WeDLM's ids on its config, as :func:`tide.models.wedlm.load_wedlm` returns it."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tide.models.model_types import WEDLM_MODEL_TYPE
    from tide.models.wedlm import DEFAULT_WEDLM_MASK_TOKEN_ID, DEFAULT_WEDLM_SHARED_VOCAB_SIZE

    tiny = shape["vocab_size"] < DEFAULT_WEDLM_SHARED_VOCAB_SIZE
    model = build_random_model(Qwen3ForCausalLM, Qwen3Config(**shape), device, dtype).eval()
    model.config.mask_token_id = 1002 if tiny else DEFAULT_WEDLM_MASK_TOKEN_ID
    model.config.shared_vocab_size = 1000 if tiny else DEFAULT_WEDLM_SHARED_VOCAB_SIZE
    model.config.teacher_model_type = WEDLM_MODEL_TYPE
    return model, model.config.shared_vocab_size


TEACHERS = {"llada2_teacher": ("cross", LLADA2, llada2_model), "wedlm_teacher": ("shared", WEDLM, wedlm_model)}


# ------------------------------------------------------------------------------------------------ data


def build_settings(pipeline: str, tiny: bool) -> BuildConfig:
    """``tide-cache build``'s defaults for ``pipeline`` (its teacher length and temperatures filled in)."""
    defaults = PIPELINE_DEFAULTS[pipeline]
    config = BuildConfig(pipeline=pipeline, teacher_max_length=defaults["teacher_max_length"],
                         temperatures=list(defaults["temperatures"]))
    if tiny:
        for key, value in {**TINY_BUILD, "teacher_max_length": TINY_TEACHER_LENGTH[pipeline]}.items():
            setattr(config, key, value)
    return config


def synthetic_samples(pipeline: str, config: BuildConfig, *, samples: int, student_vocab: int, teacher_vocab: int,
                      prompt: int, prefix: int, seed: int = 0) -> list[PreparedSample]:
    """Samples at full student and teacher length: student tokens 0..prompt-1 are the prompt, the rest
    are trained; student position s pairs with teacher position s + prefix (pipeline B) or forms the
    one-token chunk [s, s+1) ↔ [s + prefix, s + prefix + 1) (pipeline A), for every s the teacher holds."""
    rng = np.random.default_rng(seed)
    length, teacher_length = config.max_length, config.teacher_max_length
    aligned = np.arange(min(length, teacher_length - prefix), dtype=np.int32)
    out = []
    for index in range(samples):
        ids = rng.integers(0, student_vocab, length).astype(np.int32)
        teacher_ids = rng.integers(0, teacher_vocab, teacher_length).astype(np.int32)
        maskable = np.arange(length) >= prompt
        if pipeline == "shared":  # same tokens at aligned positions, as position alignment requires
            teacher_ids[aligned + prefix] = ids[aligned]
        sample = PreparedSample(
            sample_id=f"synthetic:{index}", sample_key=7919 * index + 11, input_ids=ids, maskable=maskable,
            teacher_input_ids=teacher_ids, roles=("user", "assistant"), student_char_spans=np.zeros((2, 2), np.int64),
            teacher_char_spans=np.zeros((2, 2), np.int64), student_text="", teacher_text="", num_padding=0,
            num_response_tokens=int(maskable.sum()), num_covered_tokens=int(maskable[aligned].sum()),
        )
        trained = aligned[aligned >= prompt]
        if pipeline == "shared":
            sample.student_pos, sample.teacher_pos = trained, trained + prefix
        else:
            sample.chunks = ChunkTable(student_start=aligned, student_end=aligned + 1, teacher_start=aligned + prefix,
                                       teacher_end=aligned + prefix + 1, span_index=(aligned >= prompt).astype(np.int32))
            sample.chunk_in_prompt = aligned < prompt
        out.append(sample)
    return out


# ------------------------------------------------------------------------------------------------ the build


class RecordingPipeline:
    """The build pipeline, keeping each teacher batch's padded arrays so that the same batches can be run
    again through the teacher alone."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def run_batch(self, runner: Any, batch: list, arrays: Any, tensor: Any, targets: Any) -> None:
        self.batches.append(arrays)
        self.inner.run_batch(runner, batch, arrays, tensor, targets)


class InMemoryShardBuilder(ShardBuilder):
    """:class:`ShardBuilder` around a teacher built in memory (its own constructor loads a checkpoint)."""

    def __init__(self, config: BuildConfig, runner: TeacherRunner, shared_vocab_size: int | None,
                 device: torch.device, student_vocab: int) -> None:
        self.config, self.device, self.runner = config, device, runner
        self.pipeline = RecordingPipeline(build_pipeline(config.pipeline))
        # no survey here: an empty id table ranks ids by their value (the codec's order for unseen ids)
        self.targets = target_settings(config, {"teacher": {"shared_vocab_size": shared_vocab_size}})
        pad = getattr(runner.model.config, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0
        self.kinds = pass_kinds(config.passes)
        self.cost_factor = self.pipeline.forward_cost_factor(config.regime)
        # the bounds of the build's token-id check (the synthetic ids are drawn below them)
        self.vocab_sizes = {"student_vocab": student_vocab, "teacher_vocab": int(runner.model.config.vocab_size)}


def measure_build(builder: InMemoryShardBuilder, units: list, device: torch.device) -> dict[str, Any]:
    builder.pipeline.batches.clear()
    before = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None
    reset_peak_memory(device)
    (rows, stats), seconds = timed(device, lambda: builder.build(units))
    widths = [int(a.noised.shape[1]) for a in builder.pipeline.batches]
    batch_rows = [int(a.noised.shape[0]) for a in builder.pipeline.batches]
    forward_tokens = stats.padded_tokens * builder.cost_factor
    return {
        "seconds": seconds, "rows": len(rows), "teacher_forwards": stats.teacher_forwards,
        "teacher_batches": stats.teacher_batches, "rows_per_batch_median": statistics.median(batch_rows),
        "batch_width_max": max(widths), "real_teacher_tokens": stats.real_tokens,
        "padded_teacher_tokens": stats.padded_tokens, "forward_tokens": forward_tokens,
        "teacher_seconds_inside_build": stats.teacher_seconds,
        "teacher_tokens_per_s": stats.real_tokens / seconds, "forward_tokens_per_s": forward_tokens / seconds,
        "targets": stats.targets, "peak_memory": peak_memory(device), "allocated_before_gib": before,
    }


def staged(arrays: Any, device: torch.device) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(getattr(arrays, name)).to(device)
            for name in ("noised", "clean", "lengths", "row_index", "position", "gold")}


def runner_call(builder: InMemoryShardBuilder, inputs: dict[str, torch.Tensor]) -> Any:
    """The teacher call of the pipeline's ``run_batch``, on inputs already on the device."""
    runner, targets = builder.runner, builder.targets
    args = (inputs["noised"], inputs["lengths"], inputs["row_index"], inputs["position"], inputs["gold"])
    if builder.pipeline.has_vocabulary_targets:
        return runner.topk_targets(*args, k=targets.policy.ceiling, shared_vocab_size=targets.shared_vocab_size,
                                   temperatures=list(targets.temperatures), clean_ids=inputs["clean"],
                                   targets_fn=functools.partial(sparse_targets, policy=targets.policy))
    return runner.gold_logprobs(*args, clean_ids=inputs["clean"])


def decoder_call(builder: InMemoryShardBuilder, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The teacher's layout and decoder alone: final hidden states at the wanted positions."""
    return builder.runner.hidden_at(inputs["noised"], inputs["lengths"], inputs["row_index"], inputs["position"],
                                    clean_ids=inputs["clean"])


def measure_bare(builder: InMemoryShardBuilder, build: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The build's batches again, inputs staged on the device first: the runner alone, the decoder alone."""
    inputs = [staged(arrays, device) for arrays in builder.pipeline.batches]
    _, runner_s = timed(device, lambda: [runner_call(builder, batch) for batch in inputs])
    _, decoder_s = timed(device, lambda: [decoder_call(builder, batch) for batch in inputs])
    tokens = build["real_teacher_tokens"]
    return {"runner_seconds": runner_s, "decoder_seconds": decoder_s,
            "build_over_bare_teacher": build["seconds"] / runner_s, "build_over_decoder": build["seconds"] / decoder_s,
            "runner_tokens_per_s": tokens / runner_s, "decoder_tokens_per_s": tokens / decoder_s}


def moe_check(builder: InMemoryShardBuilder, device: torch.device) -> dict[str, Any]:
    """One batch's hidden states with the grouped-matmul experts and with the per-expert loop."""
    model = builder.runner.model
    inputs = staged(builder.pipeline.batches[0], device)
    out: dict[str, Any] = {"rows": int(inputs["noised"].shape[0]), "width": int(inputs["noised"].shape[1])}
    hidden = {}
    try:
        for implementation in ("grouped_mm", "eager"):
            model.set_experts_implementation(implementation)
            decoder_call(builder, inputs)  # warm-up
            hidden[implementation], out[f"{implementation}_seconds"] = timed(device, lambda: decoder_call(builder, inputs))
    finally:
        model.set_experts_implementation("grouped_mm")
    diff = (hidden["grouped_mm"].float() - hidden["eager"].float()).abs()
    out.update({"grouped_over_loop": out["grouped_mm_seconds"] / out["eager_seconds"],
                "max_abs_diff": float(diff.max()), "max_abs_diff_over_max_abs": float(diff.max() / hidden["eager"].abs().max()),
                "dtype": str(hidden["eager"].dtype)})
    return out


# ------------------------------------------------------------------------------------------------ the part


def run(name: str, record: PartRecord, device: torch.device, tiny: bool) -> None:
    pipeline, shapes, make_model = TEACHERS[name]
    size = "tiny" if tiny else "real"
    config = build_settings(pipeline, tiny)
    dtype = default_dtype(device)
    torch.manual_seed(0)
    built = record.attempt("build_model", lambda: make_model(shapes[size], device, dtype), needs=5)
    if built is None:
        return
    model, shared_vocab = built
    record.set("model", {
        "class": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(dtype), "layers": model.config.num_hidden_layers, "hidden": model.config.hidden_size,
        "vocab": model.config.vocab_size, "weights_gib": (torch.cuda.memory_allocated(device) / 2**30
                                                          if device.type == "cuda" else None),
        "experts_implementation": getattr(model.config, "_experts_implementation", None),
    })
    record.set("settings", {"pipeline": pipeline, "regime": config.regime, "student_length": config.max_length,
                            "teacher_length": config.teacher_max_length, "batch_tokens": config.batch_tokens,
                            "passes": list(config.passes), "k": config.k, "temperatures": list(config.temperatures),
                            "lm_head_chunk": config.lm_head_chunk, **DATA[name][size]})
    runner = TeacherRunner(model, regime=config.regime, block_size=config.block_size,
                           head_chunk_size=config.lm_head_chunk)
    builder = InMemoryShardBuilder(config, runner, shared_vocab, device, DATA[name][size]["student_vocab"])
    samples = synthetic_samples(pipeline, config, teacher_vocab=runner.mask_token_id, **DATA[name][size])
    units = [(sample, 0) for sample in samples]
    if record.measure("warmup_seconds", lambda: timed(device, lambda: builder.build(units[:2]))[1], needs=5) is None:
        return
    build = record.measure("build", lambda: measure_build(builder, units, device), needs=10)
    if build is None:
        return
    record.measure("bare_teacher", lambda: measure_bare(builder, build, device), needs=2 * build["seconds"])
    if name == "llada2_teacher":
        record.measure("moe_check", lambda: moe_check(builder, device), needs=build["seconds"])
