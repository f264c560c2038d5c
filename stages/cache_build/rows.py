"""Cache rows from a unit's noise and teacher results (cache format v1 columns).

A row is assembled once every teacher forward of its unit has its results; the per-pass target columns
are placed per target item: the plain pass from the ``plain`` forward, the CompDemo columns from pass 1
(group B items) and pass 2 (group A items).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stages.cache_build.passes import (
    COMPDEMO_1,
    COMPDEMO_2,
    PLAIN,
    TeacherRequest,
    UnitNoise,
    chunk_sums,
    chunk_table,
)

_SOURCES = {"plain": (PLAIN,), "compdemo": (COMPDEMO_1, COMPDEMO_2)}


def common_columns(sample: Any, replica: int, unit_noise: UnitNoise) -> dict[str, Any]:
    """The columns every pipeline has."""
    return {
        "sample_id": str(sample.sample_id),
        "sample_key": int(sample.sample_key),
        "replica": int(replica),
        "t": float(unit_noise.t),
        "input_ids": np.asarray(sample.input_ids, dtype=np.int32),
        "maskable": np.asarray(sample.maskable, dtype=bool),
        "masked_positions": np.asarray(unit_noise.masked_positions, dtype=np.int32),
        "teacher_input_ids": np.asarray(sample.teacher_input_ids, dtype=np.int32),
        "compdemo_group": np.asarray(unit_noise.compdemo_group, dtype=np.uint8),
    }


def shared_row(
    sample: Any,
    replica: int,
    unit_noise: UnitNoise,
    requests: list[TeacherRequest],
    *,
    passes: list[str],
    k: int,
    num_temperatures: int,
    value_dtype: str,
) -> dict[str, Any]:
    """One pipeline-B row. Each request's ``results`` holds ``topk_ids`` (P, k), ``topk_values`` (P, k),
    ``log_partitions`` (P, n_T) and ``gold_logprob`` (P,) for its positions, in position order."""
    row = common_columns(sample, replica, unit_noise)
    row["target_positions"] = np.asarray(unit_noise.target_positions, dtype=np.int32)
    row["target_teacher_positions"] = np.asarray(unit_noise.target_teacher_positions, dtype=np.int32)
    num_items = row["target_positions"].shape[0]
    by_kind = {request.kind: request for request in requests}
    for pass_name in passes:
        ids = np.zeros((num_items, k), dtype=np.int32)
        values = np.zeros((num_items, k), dtype=np.float32)
        log_z = np.zeros((num_items, num_temperatures), dtype=np.float32)
        gold = np.zeros(num_items, dtype=np.float32)
        filled = np.zeros(num_items, dtype=bool)
        for kind in _SOURCES[pass_name]:
            request = by_kind.get(kind)
            if request is None:
                continue
            items = request.items
            ids[items] = request.results["topk_ids"]
            values[items] = request.results["topk_values"]
            log_z[items] = request.results["log_partitions"]
            gold[items] = request.results["gold_logprob"]
            filled[items] = True
        if not filled.all():
            missing = np.flatnonzero(~filled)[:5].tolist()
            raise RuntimeError(
                f"sample {sample.sample_id} replica {replica}: pass {pass_name!r} has no teacher targets for "
                f"target items {missing} (internal error: a teacher forward is missing)"
            )
        row[f"{pass_name}_topk_ids"] = ids
        row[f"{pass_name}_topk_values"] = values.astype(np.dtype(value_dtype))
        row[f"{pass_name}_log_partitions"] = log_z
        row[f"{pass_name}_gold_logprob"] = gold
    return row


def cross_row(
    sample: Any,
    replica: int,
    unit_noise: UnitNoise,
    requests: list[TeacherRequest],
    *,
    passes: list[str],
) -> dict[str, Any]:
    """One pipeline-A row. Each request's ``results`` holds ``gold_logprob`` (P,), the teacher log-prob of
    the clean token at each of its positions; a chunk's log-prob is their sum over its teacher tokens."""
    row = common_columns(sample, replica, unit_noise)
    table = chunk_table(sample)
    row["chunk_student_start"] = table["student_start"].astype(np.int32)
    row["chunk_student_end"] = table["student_end"].astype(np.int32)
    row["chunk_teacher_start"] = table["teacher_start"].astype(np.int32)
    row["chunk_teacher_end"] = table["teacher_end"].astype(np.int32)
    row["chunk_masked"] = np.asarray(unit_noise.item_masked, dtype=bool)
    row["chunk_in_prompt"] = table["in_prompt"]
    num_chunks = row["chunk_masked"].shape[0]
    by_kind = {request.kind: request for request in requests}
    for pass_name in passes:
        logprob = np.full(num_chunks, np.nan, dtype=np.float32)
        for kind in _SOURCES[pass_name]:
            request = by_kind.get(kind)
            if request is None:
                continue
            sums = chunk_sums(np.asarray(request.results["gold_logprob"]), request.items, num_chunks)
            present = ~np.isnan(sums)
            logprob[present] = sums[present]
        if np.isnan(logprob[row["chunk_masked"]]).any():
            raise RuntimeError(
                f"sample {sample.sample_id} replica {replica}: pass {pass_name!r} lacks the log-prob of a masked "
                "chunk (internal error: a teacher forward is missing)"
            )
        row[f"{pass_name}_chunk_logprob"] = logprob
    return row
