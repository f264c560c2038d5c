"""Turning the work units of one shard into cache rows with the teacher.

Per shard: draw every unit's noise, list its teacher forwards, pack the forwards of the whole shard into
length-sorted batches (so sequences of similar length share a batch), run the teacher, and assemble rows.
The pipeline (:mod:`stages.cache_build.pipelines`) decides what noise, forwards and rows mean.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from cache_schema.directory import CacheDirectory
from stages.cache_build.config import BuildConfig, BuildConfigError
from stages.cache_build.exact_build import with_exact_setup
from stages.cache_build.passes import pack_batches, pad_batch, pass_kinds
from stages.cache_build.pipelines import TargetSettings, build_pipeline
from stages.cache_build.unit_checks import check_teacher_outputs, check_token_ids, naming_the_batch

logger = logging.getLogger(__name__)


@dataclass
class ShardStats:
    """Per-shard counters stored in the shard's journal record and summed into the manifest."""

    rows: int = 0
    masked_positions: int = 0
    targets: int = 0
    tail_mass_sum: float = 0.0
    tail_count: int = 0
    teacher_forwards: int = 0
    teacher_batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    teacher_seconds: float = 0.0
    shard_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def target_settings(config: BuildConfig, survey: dict[str, Any]) -> TargetSettings:
    """What the teacher outputs and rows depend on: the settings, and the survey's vocabulary and id table."""
    return TargetSettings(passes=tuple(config.passes), temperatures=tuple(config.temperatures),
                          policy=config.target_policy(), encoding=config.encoding,
                          id_table=tuple(survey.get("id_table", ())),
                          shared_vocab_size=survey["teacher"]["shared_vocab_size"],
                          kind=config.targets, hidden_encoding=config.hidden_encoding)


class ShardBuilder:
    """Runs the teacher over the units of a shard and returns its rows."""

    def __init__(self, config: BuildConfig, survey: dict[str, Any], device: torch.device) -> None:
        from tide.models.teacher import TeacherRunner, load_teacher
        from tide.runtime import resolve_dtype

        self.config = config
        self.device = device
        self.pipeline = build_pipeline(config.pipeline)
        dtype = resolve_dtype(config.dtype, device)
        model = load_teacher(config.teacher, dtype=dtype, device=device)
        self.runner = TeacherRunner(
            model, regime=config.regime, block_size=config.block_size, head_chunk_size=config.lm_head_chunk
        )
        expected = survey["teacher"]["mask_token_id"]
        if self.runner.mask_token_id != expected:
            raise BuildConfigError(
                f"teacher {config.teacher}: loaded mask id {self.runner.mask_token_id} differs from the survey's {expected}"
            )
        self.targets = with_exact_setup(target_settings(config, survey), model, CacheDirectory(config.output))
        self.vocab_sizes = {"student_vocab": survey["student"]["vocab_size"],
                            "teacher_vocab": survey["teacher"]["vocab_size"]}
        pad = getattr(model.config, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0
        self.kinds = pass_kinds(config.passes)
        self.cost_factor = self.pipeline.forward_cost_factor(config.regime)
        logger.info("teacher %s on %s (%s), regime %s", config.teacher, device, dtype, config.regime)

    def _tensor(self, array: Any) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def build(self, units: list[tuple[Any, int]], shard: str = "shard") -> tuple[list[dict[str, Any]], ShardStats]:
        """Rows (in unit order) and statistics for ``units`` = [(prepared sample, replica), ...]; ``shard``
        names them in a refusal (:mod:`stages.cache_build.unit_checks`)."""
        config, pipeline = self.config, self.pipeline
        start = time.perf_counter()
        stats = ShardStats()
        check_token_ids(units, shard=shard, **self.vocab_sizes)
        noises, requests_by_unit = [], []
        for index, (sample, replica) in enumerate(units):
            unit_noise = pipeline.draw_noise(sample, replica, seed=config.seed, eps=config.eps,
                                             demo_ratio=config.demo_ratio, compdemo="compdemo" in config.passes)
            noises.append(unit_noise)
            requests_by_unit.append(pipeline.requests(index, sample, unit_noise, kinds=self.kinds,
                                                      teacher_mask_id=self.runner.mask_token_id))
        requests = [r for unit_requests in requests_by_unit for r in unit_requests]
        batches = pack_batches(requests, batch_tokens=config.batch_tokens, batch_rows=config.batch_rows,
                               cost_factor=self.cost_factor)
        for batch in batches:
            teacher_start = time.perf_counter()
            arrays = pad_batch(batch, self.pad_id)
            with naming_the_batch(batch, units, teacher=config.teacher, shard=shard):
                pipeline.run_batch(self.runner, batch, arrays, self._tensor, self.targets)
            check_teacher_outputs(batch, units, vocabulary_targets=pipeline.has_vocabulary_targets,
                                  teacher=config.teacher, shard=shard)
            stats.padded_tokens += arrays.padded_tokens
            self._sync()
            stats.teacher_seconds += time.perf_counter() - teacher_start
        stats.teacher_batches = len(batches)
        stats.teacher_forwards = len(requests)
        stats.real_tokens = sum(r.length for r in requests)
        rows = []
        for (sample, replica), unit_noise, unit_requests in zip(units, noises, requests_by_unit, strict=True):
            row = pipeline.row(sample, replica, unit_noise, unit_requests, self.targets)
            stats.targets += pipeline.num_targets(row)
            tail_sum, tail_count = pipeline.tail_mass(unit_requests, self.targets.passes)
            stats.tail_mass_sum += tail_sum
            stats.tail_count += tail_count
            stats.masked_positions += int(row["masked_positions"].shape[0])
            rows.append(row)
        stats.rows = len(rows)
        stats.shard_seconds = time.perf_counter() - start
        return rows, stats
