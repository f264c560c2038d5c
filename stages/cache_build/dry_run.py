"""``tide-cache build --dry-run``: what a build will do and cost, without loading the teacher.

The dry run reads and prepares the data exactly as the build does (same sources, tokenizers, alignment),
draws every unit's noise and lists its teacher forwards with the build's own pipeline objects, and counts:
samples kept and skipped (by reason), the alignment yield, rows, masked positions, target items, teacher
forwards and the tokens they carry. From those it estimates

* teacher FLOPs: 2 × parameters × tokens × the pipeline's sequence copies per token (a forward pass; the
  parameter count is read from the weight files' headers, no tensor is loaded; a mixture-of-experts
  teacher activates fewer parameters per token, so its figure is an upper bound);
* cache bytes, from the format's measured bytes: per masked position for everything but the targets, per
  target item and stored pass for the targets (the encoding's raw bytes of k entries and the stored
  temperatures, times its measured compression — an upper bound under a mass k policy, which keeps fewer
  entries where the teacher is confident), and per Parquet row group (footer and page headers).

Nothing is written to the output directory.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cache_schema.codec import item_bytes
from cache_schema.schemas import ENCODING_FLOAT32, ENCODING_PACKED, PIPELINE_CROSS
from stages.cache_build.config import BuildConfig
from stages.cache_build.passes import pass_kinds
from stages.cache_build.pipelines import build_pipeline
from stages.cache_build.survey import iter_prepared, load_tokenizers

logger = logging.getLogger(__name__)

# Compressed bytes measured on built caches (zstd Parquet, the format of cache_schema):
# shared — 14 B per masked position for the columns other than the targets; the target columns of a pass
#   compress to a share of their raw bytes (cache_schema.codec.item_bytes), measured by
#   benchmarks/bench_reader.py (benchmarks/results/reader.json, the calibrated teacher at the paper's shape):
#   rank24-delta8 0.56 (frequent ids have small ranks; equal value steps repeat), float32 0.68;
# cross — tiny-teacher builds of 40 HumanEval-derived samples (256 tokens, 2 replicas): 4.5 B per chunk
#   target per pass and the same 14 B per masked position;
# both — the same builds with 2 and 16 rows per row group: 3,900 B of footer and page headers per row group.
PER_MASKED_POSITION = 14.0
TARGET_COMPRESSION = {ENCODING_PACKED: 0.56, ENCODING_FLOAT32: 0.68}
CHUNK_TARGET_BYTES_PER_PASS = 4.5
BYTES_PER_ROW_GROUP = 3900.0


@dataclass
class DryRunReport:
    """The dry run's counts and estimates (``as_dict`` for JSON)."""

    pipeline: str
    samples: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    alignment_yield: float = 0.0
    rows: int = 0
    masked_positions: int = 0
    targets: int = 0
    teacher_forwards: int = 0
    teacher_tokens: int = 0
    teacher_parameters: int | None = None
    teacher_flops: float | None = None
    cache_bytes: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        skipped = ", ".join(f"{reason} {count}" for reason, count in self.skipped.items()) or "none"
        flops = f"{self.teacher_flops:.3e}" if self.teacher_flops is not None else "unknown (no weight files)"
        return [
            f"pipeline           {self.pipeline}",
            f"samples kept       {self.samples}",
            f"samples skipped    {sum(self.skipped.values())} ({skipped})",
            f"alignment yield    {self.alignment_yield:.3f}",
            f"rows               {self.rows}",
            f"masked positions   {self.masked_positions}",
            f"target items       {self.targets}",
            f"teacher forwards   {self.teacher_forwards}",
            f"teacher tokens     {self.teacher_tokens}",
            f"teacher FLOPs      {flops} (forward passes, {self.teacher_parameters or '?'} parameters)",
            f"cache bytes        ~{self.cache_bytes / 2**20:.1f} MiB (estimate from measured bytes per position; "
            "an upper bound under a mass k policy)",
        ]


def weight_parameters(teacher: str) -> int | None:
    """Parameters in a checkpoint's ``*.safetensors`` files, from their headers (no tensor is read)."""
    from safetensors import safe_open

    files = sorted(Path(teacher).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                count = 1
                for size in handle.get_slice(name).get_shape():
                    count *= int(size)
                total += count
    return total


def target_bytes_per_pass(config: BuildConfig) -> float:
    """Compressed bytes of one target item's columns of one pass. A mass policy keeps at most k entries and
    usually far fewer, so for it this is an upper bound (the teacher decides; the dry run has none)."""
    if config.pipeline == PIPELINE_CROSS:
        return CHUNK_TARGET_BYTES_PER_PASS
    raw = item_bytes(config.encoding, config.k, len(config.temperatures))
    return TARGET_COMPRESSION[config.encoding] * raw


def row_groups(rows: int, config: BuildConfig) -> int:
    """Row groups of a cache of ``rows`` rows: full shards of ``rows_per_shard`` rows, then the rest."""
    full, rest = divmod(rows, config.rows_per_shard)
    per_shard = -(-config.rows_per_shard // config.rows_per_row_group)
    return full * per_shard + -(-rest // config.rows_per_row_group)


def dry_run(config: BuildConfig) -> DryRunReport:
    """Count what the build of ``config`` would do (see the module docstring)."""
    from stages.cache_build.preparation import PrepStats
    from stages.cache_build.skips import SkipCounter
    from tide.models.loading import read_checkpoint_config
    from tide.models.teacher import teacher_vocabulary

    config = config.resolve()
    ids = teacher_vocabulary(read_checkpoint_config(config.teacher), where=f"teacher {config.teacher}")
    pipeline = build_pipeline(config.pipeline)
    kinds = pass_kinds(config.passes)
    student_tok, teacher_tok = load_tokenizers(config)
    skips, prep = SkipCounter(), PrepStats()
    report = DryRunReport(pipeline=config.pipeline)
    for sample in iter_prepared(config, student_tok, teacher_tok, skips, prep):
        report.samples += 1
        for replica in range(config.replicas):
            noise = pipeline.draw_noise(sample, replica, seed=config.seed, eps=config.eps,
                                        demo_ratio=config.demo_ratio, compdemo="compdemo" in config.passes)
            requests = pipeline.requests(0, sample, noise, kinds=kinds, teacher_mask_id=ids.mask_token_id)
            report.rows += 1
            report.masked_positions += int(noise.masked_positions.shape[0])
            report.targets += int(noise.item_masked.sum())
            report.teacher_forwards += len(requests)
            report.teacher_tokens += sum(r.length for r in requests)
    report.skipped = skips.as_dict()
    report.alignment_yield = prep.alignment_yield
    report.teacher_parameters = weight_parameters(config.teacher)
    if report.teacher_parameters is not None:
        copies = pipeline.forward_cost_factor(config.regime)
        report.teacher_flops = 2.0 * report.teacher_parameters * report.teacher_tokens * copies
    report.cache_bytes = (report.masked_positions * PER_MASKED_POSITION
                          + report.targets * len(config.passes) * target_bytes_per_pass(config)
                          + row_groups(report.rows, config) * BYTES_PER_ROW_GROUP)
    return report
