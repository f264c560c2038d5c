"""The "online" distillation variant: tide-train's own loop, with the teacher run inside each step.

Online and cached training must differ in one thing only: where the teacher targets come from. So the
online run is :func:`stages.train.loop.train` itself (same order, collation, step, optimizer, schedule,
clipping, logging), with its data stream swapped for :class:`OnlineTargetStream`: it reads each batch's
rows from the cache *without* the stored teacher targets, takes the stored noise (t, masked positions,
target positions, CompDemo groups, chunk tables), runs the teacher on it with the build stage's own code
(the pipeline's ``requests`` → ``pack_batches`` → the pipeline's ``run_batch`` on a
:class:`tide.models.teacher.TeacherRunner`), and assembles the target columns with the pipeline's ``row`` — i.e. exactly what stage one would have stored, computed in-step. Vocabulary targets are computed
at k = the whole shared vocabulary in float32, so the online teacher is exact.

:func:`online_stream_class` binds a target provider to that stream; the run passes it to
``train(config, stream_class=...)``.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from cache_schema.schemas import ENCODING_FLOAT32
from stages.cache_build.passes import UnitNoise, pack_batches, pad_batch, pass_kinds
from stages.cache_build.pipelines import TargetSettings, build_pipeline
from stages.train.data import CacheStream
from stages.train.pipelines import SharedPipeline
from tide.targets import KPolicy

logger = logging.getLogger(__name__)

SHARED_NOISE_COLUMNS = ("sample_key", "teacher_input_ids", "target_positions", "target_teacher_positions",
                        "compdemo_group")
CROSS_NOISE_COLUMNS = ("sample_key", "teacher_input_ids", "chunk_student_start", "chunk_student_end",
                       "chunk_teacher_start", "chunk_teacher_end", "chunk_masked", "chunk_in_prompt",
                       "compdemo_group")


class TeacherTargets:
    """Computes a pass's target columns for cache rows from the stored noise, with a live teacher.

    ``runner``: a :class:`tide.models.teacher.TeacherRunner`; ``pipeline``: "shared" or "cross";
    ``shared_vocab_size`` and ``temperatures`` as in the cache manifest (pipeline "shared")."""

    def __init__(self, runner: Any, *, pipeline: str, shared_vocab_size: int | None, temperatures: tuple[float, ...],
                 batch_tokens: int = 8192) -> None:
        if pipeline not in ("shared", "cross"):
            raise ValueError(f"pipeline={pipeline!r}: expected 'shared' or 'cross'")
        if pipeline == "shared" and not shared_vocab_size:
            raise ValueError("pipeline 'shared' needs shared_vocab_size")
        self.runner = runner
        self.pipeline = pipeline
        self.shared_vocab_size = shared_vocab_size
        self.temperatures = list(temperatures)
        self.batch_tokens = batch_tokens
        pad = getattr(runner.model.config, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0
        self.device = next(runner.model.parameters()).device
        self.forwards = 0

    def settings(self, target_pass: str) -> TargetSettings:
        """Every shared id kept, float32 values: the online teacher's targets are exact."""
        vocab = int(self.shared_vocab_size or 1)
        return TargetSettings(passes=(target_pass,), temperatures=tuple(self.temperatures),
                              policy=KPolicy("fixed", ceiling=vocab), encoding=ENCODING_FLOAT32,
                              shared_vocab_size=self.shared_vocab_size)

    def _unit(self, row: dict[str, Any]) -> tuple[SimpleNamespace, UnitNoise]:
        groups = np.asarray(row["compdemo_group"], dtype=np.uint8)
        if self.pipeline == "shared":
            targets = np.asarray(row["target_positions"], dtype=np.int32)
            sample = SimpleNamespace(sample_id=row["sample_id"], sample_key=row["sample_key"],
                                     input_ids=row["input_ids"], maskable=row["maskable"],
                                     teacher_input_ids=np.asarray(row["teacher_input_ids"]))
            noise = UnitNoise(t=float(row["t"]), masked_positions=np.asarray(row["masked_positions"]),
                              item_masked=np.ones(targets.shape[0], dtype=bool), compdemo_group=groups,
                              target_positions=targets,
                              target_teacher_positions=np.asarray(row["target_teacher_positions"], dtype=np.int32))
            return sample, noise
        chunks = SimpleNamespace(student_start=row["chunk_student_start"], student_end=row["chunk_student_end"],
                                 teacher_start=row["chunk_teacher_start"], teacher_end=row["chunk_teacher_end"])
        sample = SimpleNamespace(sample_id=row["sample_id"], sample_key=row["sample_key"], input_ids=row["input_ids"],
                                 maskable=row["maskable"], teacher_input_ids=np.asarray(row["teacher_input_ids"]),
                                 chunks=chunks, chunk_in_prompt=np.asarray(row["chunk_in_prompt"], dtype=bool))
        noise = UnitNoise(t=float(row["t"]), masked_positions=np.asarray(row["masked_positions"]),
                          item_masked=np.asarray(row["chunk_masked"], dtype=bool), compdemo_group=groups)
        return sample, noise

    def fill(self, rows: list[dict[str, Any]], target_pass: str) -> list[dict[str, Any]]:
        """Return copies of ``rows`` with the ``target_pass`` target columns computed by the teacher."""
        units = [self._unit(row) for row in rows]
        kinds = pass_kinds([target_pass])
        pipeline = build_pipeline(self.pipeline)
        requests = [
            pipeline.requests(i, sample, noise, kinds=kinds, teacher_mask_id=self.runner.mask_token_id)
            for i, (sample, noise) in enumerate(units)
        ]
        targets = self.settings(target_pass)
        flat = [r for unit_requests in requests for r in unit_requests]
        for batch in pack_batches(flat, batch_tokens=self.batch_tokens, batch_rows=None):
            arrays = pad_batch(batch, self.pad_id)
            pipeline.run_batch(self.runner, batch, arrays, lambda a: torch.from_numpy(a).to(self.device), targets)
            self.forwards += len(batch)
        out = []
        for row, (sample, noise), unit_requests in zip(rows, units, requests, strict=True):
            built = pipeline.row(sample, int(row["replica"]), noise, unit_requests, targets)
            merged = dict(row)
            merged.update({k: v for k, v in built.items() if k.startswith(f"{target_pass}_")})
            out.append(merged)
        return out


class OnlineTargetStream(CacheStream):
    """A :class:`CacheStream` whose rows get their teacher targets from :attr:`provider` instead of the
    cache: the stored target columns are never read, the stored noise columns are."""

    provider: TeacherTargets | None = None

    def __init__(self, reader, collate_spec, columns, config) -> None:
        if self.provider is None:
            raise RuntimeError("OnlineTargetStream.provider is not set (use online_stream_class)")
        self.target_pass = collate_spec.target_pass
        stored = [c for c in columns if not c.startswith(f"{collate_spec.target_pass}_")]
        extra = SHARED_NOISE_COLUMNS if reader.manifest.pipeline == "shared" else CROSS_NOISE_COLUMNS
        needed = stored + [c for c in extra if c not in stored]
        if collate_spec.pipeline is None:
            needed = list(columns)
        self._online = collate_spec.pipeline is not None
        if isinstance(collate_spec.pipeline, SharedPipeline):  # decode the online columns, not the cache's
            online = SharedPipeline(codec=self.provider.settings(self.target_pass).codec(),
                                    temperatures=collate_spec.pipeline.temperatures)
            collate_spec = replace(collate_spec, pipeline=online)
        super().__init__(reader, collate_spec, needed, config)

    def rows(self, pairs: np.ndarray) -> list[dict[str, object]]:
        rows = super().rows(pairs)
        if not self._online:
            return rows
        return self.provider.fill(rows, self.target_pass)


def online_stream_class(provider: TeacherTargets) -> type[OnlineTargetStream]:
    """The :class:`OnlineTargetStream` subclass whose rows take their teacher targets from ``provider``."""
    return type("BoundOnlineTargetStream", (OnlineTargetStream,), {"provider": provider})
