"""Build statistics: what the manifest's ``build.stats`` records and the summary a build logs at the end."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

# What preparation changed in the data (stages.cache_build.preparation.PrepStats), recorded and logged.
DATA_CHANGES = ("truncated_samples", "truncated_tokens", "teacher_truncated_samples", "teacher_truncated_tokens",
                "cut_contents", "cut_characters", "special_text_samples", "special_text_tokens", "duplicates_kept")


def summarise(survey: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """Build statistics for the manifest from the survey and every shard's journal record."""
    totals: dict[str, float] = {}
    for record in records:
        for key, value in record["stats"].items():
            totals[key] = totals.get(key, 0) + value
    total_bytes = sum(record["info"]["bytes"] for record in records)
    masked = int(totals.get("masked_positions", 0))
    targets = int(totals.get("targets", 0))
    teacher_seconds = float(totals.get("teacher_seconds", 0.0))
    build_seconds = float(totals.get("shard_seconds", 0.0))
    tail_count = int(totals.get("tail_count", 0))
    padded = int(totals.get("padded_tokens", 0))
    prep = survey["prep"]
    return {
        "samples": survey["num_samples"],
        "rows": int(totals.get("rows", 0)),
        "shards": len(records),
        "bytes": total_bytes,
        "skipped": survey["skipped"],
        "skipped_total": int(sum(survey["skipped"].values())),
        "alignment_yield": prep["alignment_yield"],
        "alignment_drops": prep["drops"],
        "data_changes": {key: int(prep.get(key, 0)) for key in DATA_CHANGES},
        "masked_positions": masked,
        "targets": targets,
        "mean_tail_mass": (float(totals["tail_mass_sum"]) / tail_count) if tail_count else None,
        "bytes_per_masked_position": total_bytes / masked if masked else None,
        "bytes_per_target": total_bytes / targets if targets else None,
        "teacher_forwards": int(totals.get("teacher_forwards", 0)),
        "teacher_batches": int(totals.get("teacher_batches", 0)),
        "padding_efficiency": int(totals.get("real_tokens", 0)) / padded if padded else None,
        "teacher_seconds": teacher_seconds,
        "build_seconds": build_seconds,
        "teacher_time_fraction": teacher_seconds / build_seconds if build_seconds else None,
    }


def log_summary(stats: dict[str, Any]) -> None:
    def fmt(value: Any, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    logger.info(
        "build summary: %d samples → %d rows in %d shards (%s bytes); skipped %d %s",
        stats["samples"], stats["rows"], stats["shards"], stats["bytes"], stats["skipped_total"], stats["skipped"],
    )
    changes = stats.get("data_changes", {})
    logger.info(
        "data changes: %d samples truncated to the student length (%d tokens cut), %d teacher sequences truncated "
        "(%d tokens), %d contents cut before tokenisation (%d characters), %d samples with special-token text in a "
        "content (%d tokens), %d duplicates kept",
        *(changes.get(key, 0) for key in DATA_CHANGES),
    )
    logger.info(
        "alignment yield %s; %d masked positions, %d targets; mean tail mass %s; %s bytes per masked position",
        fmt(stats["alignment_yield"], ".3f"), stats["masked_positions"], stats["targets"],
        fmt(stats["mean_tail_mass"], ".4f"), fmt(stats["bytes_per_masked_position"], ".1f"),
    )
    logger.info(
        "teacher %.1f s of %.1f s shard time (%s); %d forwards in %d batches, padding efficiency %s",
        stats["teacher_seconds"], stats["build_seconds"], fmt(stats["teacher_time_fraction"], ".1%"),
        stats["teacher_forwards"], stats["teacher_batches"], fmt(stats["padding_efficiency"], ".1%"),
    )
