"""What each cache pipeline means to stage one: noise → teacher requests → teacher outputs → cache row.

One object per pipeline (:func:`build_pipeline`), chosen once from the resolved build settings; nothing
else in the build compares pipeline names.

* ``shared`` (pipeline B): the student mask is drawn over maskable positions; target items are the masked
  student positions that have an aligned teacher position (ascending). A request masks the teacher at the
  aligned teacher positions of its items and asks for sparse targets there (top entries by the k policy,
  log tail masses, gold log-prob), which the row encodes with the cache's codec and id table.
* ``cross`` (pipeline A): the student mask is made chunk-consistent (any masked token masks its chunk);
  target items are all chunks of the table (``chunk_masked`` tells which carry targets). A request masks
  every teacher token of its chunks and asks for the gold log-probs of those tokens, summed per chunk.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from cache_schema.codec import SparseArrays, SparseCodec, id_table_from_counts
from cache_schema.exact_targets import HIDDEN_BF16, HiddenCodec, with_exact_columns
from cache_schema.manifest import EncodingInfo, KPolicyInfo, SparseInfo, TargetsInfo
from cache_schema.schemas import (
    ENCODING_PACKED,
    PIPELINE_CROSS,
    PIPELINE_SHARED,
    chunk_logprob_column,
    schema_for,
)
from stages.cache_build.exact_build import (
    HIDDEN_RESULT,
    hidden_results,
    item_hidden,
    stores_exact,
    stores_sparse,
)
from stages.cache_build.passes import (
    PASS_SOURCES,
    PLAIN,
    PaddedBatch,
    TeacherRequest,
    UnitNoise,
    compdemo_groups,
    draw_timestep_and_mask,
    items_of_pass,
    make_request,
    no_groups,
)
from tide import noise
from tide.alignment.chunks import align_chunks
from tide.alignment.positions import align_positions
from tide.alignment.token_bytes import token_bytes_table
from tide.targets import KPolicy, sparse_targets

# Ids of the id table (the most frequent trained ids of the build's data take the smallest ranks): 4096
# capture nearly all the gain of a complete table (measured in benchmarks/bench_reader.py).
ID_TABLE_SIZE = 4096


@dataclass(frozen=True)
class TargetSettings:
    """The build settings the teacher outputs depend on; ``policy``, ``encoding`` and ``id_table`` are the
    shared pipeline's (``id_table``: ids by descending frequency, from the survey). ``kind``: which targets a
    shared cache stores (sparse, exact or both, :mod:`stages.cache_build.exact_build`); exact targets are
    ``hidden_size``-wide hidden states in ``hidden_encoding``."""

    passes: tuple[str, ...]
    temperatures: tuple[float, ...]
    policy: KPolicy = KPolicy()
    encoding: str = ENCODING_PACKED
    id_table: tuple[int, ...] = ()
    shared_vocab_size: int | None = None
    kind: str = "sparse"
    hidden_encoding: str = HIDDEN_BF16
    hidden_size: int | None = None

    def codec(self) -> SparseCodec:
        return SparseCodec(self.encoding, num_temperatures=len(self.temperatures), id_table=self.id_table,
                           vocab_size=self.shared_vocab_size)

    def hidden_codec(self) -> HiddenCodec | None:
        """The exact targets' codec, None when the cache stores none."""
        return HiddenCodec(self.hidden_encoding, self.hidden_size) if stores_exact(self.kind) else None


class IdCounter:
    """Counts the trained student ids (maskable positions) of the prepared samples: the id table's source."""

    def __init__(self) -> None:
        self.counts = np.zeros(0, dtype=np.int64)

    def add(self, sample: Any) -> None:
        ids = np.asarray(sample.input_ids, dtype=np.int64)[np.asarray(sample.maskable, dtype=bool)]
        found = np.bincount(ids, minlength=self.counts.shape[0])
        found[: self.counts.shape[0]] += self.counts
        self.counts = found

    def table(self, shared_vocab_size: int, limit: int = ID_TABLE_SIZE) -> list[int]:
        """The ids inside the shared slice by descending count (ties by id), at most ``limit``."""
        return id_table_from_counts(self.counts[:shared_vocab_size], limit)


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


def _missing_targets(sample: Any, replica: int, pass_name: str, items: list[int]) -> RuntimeError:
    return RuntimeError(
        f"sample {sample.sample_id} replica {replica}: pass {pass_name!r} has no teacher targets for target "
        f"items {items[:5]} (internal error: a teacher forward is missing)"
    )


class SharedBuildPipeline:
    """Pipeline B: sparse teacher targets at aligned, masked student positions."""

    name = PIPELINE_SHARED
    has_vocabulary_targets = True  # top entries over a shared vocabulary: the manifest records the policy

    chunk_consistent = False
    pads_teacher_to_blocks = True  # the original's WeDLM collator EOS-pads the cut teacher to whole blocks

    def schema(self, targets: TargetSettings) -> pa.Schema:
        schema = schema_for(self.name, passes=targets.passes, num_temperatures=len(targets.temperatures),
                            encoding=targets.encoding, sparse=stores_sparse(targets.kind))
        hidden = targets.hidden_codec()
        return schema if hidden is None else with_exact_columns(schema, targets.passes, hidden)

    def survey_counter(self) -> IdCounter:
        return IdCounter()

    def targets_info(self, settings: TargetSettings) -> TargetsInfo:
        """The manifest's ``targets`` section (its ``exact`` part is added from the head file at finalisation)."""
        if not stores_sparse(settings.kind):
            return TargetsInfo(passes=list(settings.passes), temperatures=list(settings.temperatures))
        policy = settings.policy
        mass = policy.kind == "mass"
        k_policy = KPolicyInfo(kind=policy.kind, ceiling=policy.ceiling, mass=policy.mass if mass else None,
                               temperature=policy.temperature if mass else None, floor=policy.floor if mass else None)
        packed = settings.encoding == ENCODING_PACKED
        encoding = EncodingInfo(name=settings.encoding, value_step=settings.codec().value_step if packed else None,
                                id_table=list(settings.id_table) if packed else None)
        return TargetsInfo(passes=list(settings.passes), temperatures=list(settings.temperatures),
                           sparse=SparseInfo(k_policy=k_policy, encoding=encoding))

    def align(self, prepared: Any, student: Any, teacher: Any, student_tok: Any, teacher_tok: Any, *,
              student_limit: int, teacher_limit: int) -> None:
        """Pair content tokens position to position (same character span, same id) into ``prepared``."""
        pairs = align_positions(student, teacher, student_limit=student_limit, teacher_limit=teacher_limit)
        prepared.student_pos = pairs.student_pos
        prepared.teacher_pos = pairs.teacher_pos
        prepared.num_covered_tokens = int(prepared.maskable[pairs.student_pos].sum())
        prepared.drops = Counter(pairs.drops)

    @staticmethod
    def teacher_context_end(prepared: Any) -> int | None:
        """Where the ``paper`` teacher context ends: after the last aligned teacher position (None: no pair)."""
        return int(prepared.teacher_pos.max()) + 1 if len(prepared.teacher_pos) else None

    def forward_cost_factor(self, regime: str) -> int:
        """Sequence copies per teacher token: every WeDLM regime concatenates x0 and x_t."""
        return 2

    def draw_noise(self, sample: Any, replica: int, *, seed: int, eps: float, demo_ratio: float,
                   compdemo: bool) -> UnitNoise:
        t, mask = draw_timestep_and_mask(sample, replica, seed=seed, eps=eps)
        if sample.student_pos is None or sample.teacher_pos is None:
            raise ValueError(f"sample {sample.sample_id}: no aligned positions (was it prepared for pipeline 'shared'?)")
        student_pos = np.asarray(sample.student_pos, dtype=np.int64)
        teacher_pos = np.asarray(sample.teacher_pos, dtype=np.int64)
        if student_pos.shape != teacher_pos.shape:
            raise ValueError(f"sample {sample.sample_id}: student_pos {student_pos.shape} and teacher_pos "
                             f"{teacher_pos.shape} differ in shape")
        order = np.argsort(student_pos, kind="stable")
        student_pos, teacher_pos = student_pos[order], teacher_pos[order]
        hit = mask[student_pos]
        targets = student_pos[hit].astype(np.int32)
        groups = (compdemo_groups(sample, replica, targets, seed=seed, demo_ratio=demo_ratio) if compdemo
                  else no_groups())
        return UnitNoise(t=t, masked_positions=np.flatnonzero(mask).astype(np.int32),
                         item_masked=np.ones(targets.shape[0], dtype=bool), compdemo_group=groups,
                         target_positions=targets, target_teacher_positions=teacher_pos[hit].astype(np.int32))

    def requests(self, unit: int, sample: Any, unit_noise: UnitNoise, *, kinds: list[str],
                 teacher_mask_id: int) -> list[TeacherRequest]:
        """The teacher forwards of one unit; a forward with nothing masked is left out."""
        clean = np.asarray(sample.teacher_input_ids, dtype=np.int64)
        out = []
        for kind in kinds:
            items = items_of_pass(kind, unit_noise.item_masked, unit_noise.compdemo_group)
            if items.shape[0]:
                positions = unit_noise.target_teacher_positions[items].astype(np.int64)
                out.append(make_request(unit, kind, clean, positions, items.astype(np.int64), teacher_mask_id))
        return out

    def run_batch(self, runner: Any, batch: list[TeacherRequest], arrays: PaddedBatch, tensor: Any,
                  targets: TargetSettings) -> None:
        """Sparse targets and / or hidden states at the batch's wanted positions (one teacher forward), stored
        per request (numpy) in ``results``."""
        policy = targets.policy
        hidden = runner.hidden_at(tensor(arrays.noised), tensor(arrays.lengths), tensor(arrays.row_index),
                                  tensor(arrays.position), clean_ids=tensor(arrays.clean))
        fields = {}
        if stores_sparse(targets.kind):
            found = runner.topk_from_hidden(
                hidden, tensor(arrays.gold), k=policy.ceiling, shared_vocab_size=targets.shared_vocab_size,
                temperatures=list(targets.temperatures), targets_fn=functools.partial(sparse_targets, policy=policy),
            )
            fields = {name: t.cpu().numpy() for name, t in {
                "counts": found.counts, "ids": found.topk_ids, "values": found.topk_values,
                "log_tails": found.log_tails, "gold_logprob": found.gold_logprob}.items()}
        if stores_exact(targets.kind):
            fields[HIDDEN_RESULT] = hidden_results(hidden)
        parts = {name: np.split(array, arrays.splits) for name, array in fields.items()}
        for index, request in enumerate(batch):
            request.results = {name: part[index] for name, part in parts.items()}

    def row(self, sample: Any, replica: int, unit_noise: UnitNoise, requests: list[TeacherRequest],
            targets: TargetSettings) -> dict[str, Any]:
        """One row; each request's ``results`` holds its positions' targets, in position order."""
        row = common_columns(sample, replica, unit_noise)
        row["target_positions"] = np.asarray(unit_noise.target_positions, dtype=np.int32)
        row["target_teacher_positions"] = np.asarray(unit_noise.target_teacher_positions, dtype=np.int32)
        num_items = row["target_positions"].shape[0]
        by_kind = {request.kind: request for request in requests}
        codec, hidden = targets.codec(), targets.hidden_codec()
        for pass_name in targets.passes:
            parts = [by_kind[kind] for kind in PASS_SOURCES[pass_name] if kind in by_kind]
            if stores_sparse(targets.kind):
                row.update(codec.encode(_item_targets(parts, num_items, len(targets.temperatures), sample, replica,
                                                      pass_name), pass_name))
            if hidden is not None:
                where = f"sample {sample.sample_id} replica {replica}: pass {pass_name!r}"
                row.update(hidden.encode(item_hidden(parts, num_items, hidden, where), pass_name))
        return row

    def num_targets(self, row: dict[str, Any]) -> int:
        return int(row["target_positions"].shape[0])

    def tail_mass(self, requests: list[TeacherRequest], passes: tuple[str, ...]) -> tuple[float, int]:
        """(Σ tail mass at T = 1, positions) of the plain pass (CompDemo's if no plain pass)."""
        chosen = [r for r in requests if r.kind == PLAIN] if "plain" in passes else requests
        tails = [np.exp(r.results["log_tails"][:, 0].astype(np.float64)) for r in chosen if "log_tails" in r.results]
        return float(sum(t.sum() for t in tails)), int(sum(t.shape[0] for t in tails))


def _item_targets(requests: Sequence[TeacherRequest], num_items: int, num_temperatures: int, sample: Any,
                  replica: int, pass_name: str) -> SparseArrays:
    """The sparse targets of a row's items in item order, gathered from the requests that computed them."""
    counts = np.zeros(num_items, dtype=np.int64)
    width = max((r.results["ids"].shape[1] for r in requests), default=1)
    ids = np.zeros((num_items, width), dtype=np.int64)
    values = np.zeros((num_items, width), dtype=np.float32)
    tails = np.zeros((num_items, num_temperatures), dtype=np.float32)
    gold = np.zeros(num_items, dtype=np.float32)
    filled = np.zeros(num_items, dtype=bool)
    for request in requests:
        found, items = request.results, request.items
        counts[items] = found["counts"]
        ids[items, : found["ids"].shape[1]] = found["ids"]
        values[items, : found["values"].shape[1]] = found["values"]
        tails[items] = found["log_tails"]
        gold[items] = found["gold_logprob"]
        filled[items] = True
    if not filled.all():
        raise _missing_targets(sample, replica, pass_name, np.flatnonzero(~filled).tolist())
    stored = np.arange(width)[None, :] < counts[:, None]
    return SparseArrays(counts, ids[stored], values[stored], tails, gold)


class CrossBuildPipeline:
    """Pipeline A: the teacher's chunk log-prob at every masked chunk."""

    name = PIPELINE_CROSS
    has_vocabulary_targets = False
    chunk_consistent = True  # a masked token masks its whole chunk
    pads_teacher_to_blocks = False  # LLaDA2's paper regime reads x_t alone, padding keys masked

    def schema(self, targets: TargetSettings) -> pa.Schema:
        return schema_for(self.name, passes=targets.passes)

    def survey_counter(self) -> None:
        return None  # chunk log-probs store no ids

    def targets_info(self, settings: TargetSettings) -> TargetsInfo:
        """The manifest's ``targets`` section."""
        return TargetsInfo(passes=list(settings.passes), temperatures=list(settings.temperatures))

    def align(self, prepared: Any, student: Any, teacher: Any, student_tok: Any, teacher_tok: Any, *,
              student_limit: int, teacher_limit: int) -> None:
        """Walk both tokenizations into byte-exact chunks; a chunk with a student token that is not maskable
        (a non-assistant message, or an earlier turn when only the last is trained) is a prompt chunk, never
        in the loss — the original's rule (a chunk with any prompt-labelled token is excluded)."""
        table = align_chunks(student, teacher, token_bytes_table(student_tok), token_bytes_table(teacher_tok),
                             student_limit=student_limit, teacher_limit=teacher_limit)
        maskable = np.asarray(prepared.maskable, dtype=bool)
        in_prompt = np.asarray([not maskable[a:b].all() for a, b in zip(table.student_start, table.student_end,
                                                                        strict=True)], dtype=bool)
        covered = np.zeros(prepared.length, dtype=bool)
        for start, end, prompt in zip(table.student_start, table.student_end, in_prompt, strict=True):
            if not prompt:
                covered[start:end] = True
        prepared.chunks = table
        prepared.chunk_in_prompt = np.asarray(in_prompt, dtype=bool)
        prepared.num_covered_tokens = int((covered & prepared.maskable).sum())
        prepared.drops = Counter(table.drops)

    @staticmethod
    def teacher_context_end(prepared: Any) -> int | None:
        """Where the ``paper`` teacher context ends: after the last chunk, all inside the student's truncated
        sequence (None: no chunk, the capped sequence stays whole)."""
        ends = prepared.chunks.teacher_end
        return int(np.max(ends)) if len(ends) else None

    def forward_cost_factor(self, regime: str) -> int:
        """Sequence copies per teacher token: LLaDA2's paper regime sees x_t alone, native x_t ⊕ x0."""
        return 1 if regime == "paper" else 2

    @staticmethod
    def chunk_table(sample: Any) -> dict[str, np.ndarray]:
        """The chunk table of a prepared sample as int64/bool arrays (C,): ``student_start``,
        ``student_end``, ``teacher_start``, ``teacher_end`` (end exclusive) and ``in_prompt``."""
        chunks = sample.chunks
        if chunks is None or sample.chunk_in_prompt is None:
            raise ValueError(f"sample {sample.sample_id}: no chunk table (was it prepared for pipeline 'cross'?)")
        table = {
            "student_start": np.asarray(chunks.student_start, dtype=np.int64),
            "student_end": np.asarray(chunks.student_end, dtype=np.int64),
            "teacher_start": np.asarray(chunks.teacher_start, dtype=np.int64),
            "teacher_end": np.asarray(chunks.teacher_end, dtype=np.int64),
            "in_prompt": np.asarray(sample.chunk_in_prompt, dtype=bool),
        }
        sizes = {k: v.shape for k, v in table.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"sample {sample.sample_id}: chunk table columns differ in shape: {sizes}")
        return table

    def draw_noise(self, sample: Any, replica: int, *, seed: int, eps: float, demo_ratio: float,
                   compdemo: bool) -> UnitNoise:
        t, mask = draw_timestep_and_mask(sample, replica, seed=seed, eps=eps)
        table = self.chunk_table(sample)
        expanded, chunk_masked = noise.chunk_consistent_mask(mask, table["student_start"], table["student_end"])
        indices = np.arange(table["student_start"].shape[0], dtype=np.int64)
        groups = (compdemo_groups(sample, replica, indices, seed=seed, demo_ratio=demo_ratio) if compdemo
                  else no_groups())
        return UnitNoise(t=t, masked_positions=np.flatnonzero(np.asarray(expanded, dtype=bool)).astype(np.int32),
                         item_masked=np.asarray(chunk_masked, dtype=bool), compdemo_group=groups)

    def requests(self, unit: int, sample: Any, unit_noise: UnitNoise, *, kinds: list[str],
                 teacher_mask_id: int) -> list[TeacherRequest]:
        """The teacher forwards of one unit; a forward with nothing masked is left out."""
        clean = np.asarray(sample.teacher_input_ids, dtype=np.int64)
        table = self.chunk_table(sample)
        out = []
        for kind in kinds:
            items = items_of_pass(kind, unit_noise.item_masked, unit_noise.compdemo_group)
            if items.shape[0]:
                positions, item_of_position = _expand_ranges(table["teacher_start"][items],
                                                             table["teacher_end"][items], items)
                out.append(make_request(unit, kind, clean, positions, item_of_position, teacher_mask_id))
        return out

    def run_batch(self, runner: Any, batch: list[TeacherRequest], arrays: PaddedBatch, tensor: Any,
                  targets: TargetSettings) -> None:
        """The teacher's log-prob of the clean token at each wanted position, per request in ``results``."""
        logprob = runner.gold_logprobs(
            tensor(arrays.noised), tensor(arrays.lengths), tensor(arrays.row_index), tensor(arrays.position),
            tensor(arrays.gold), clean_ids=tensor(arrays.clean),
        ).float().cpu().numpy()
        for request, part in zip(batch, np.split(logprob, arrays.splits), strict=True):
            request.results = {"gold_logprob": part}

    def row(self, sample: Any, replica: int, unit_noise: UnitNoise, requests: list[TeacherRequest],
            targets: TargetSettings) -> dict[str, Any]:
        """One row; a chunk's log-prob is the sum of its teacher tokens' gold log-probs."""
        row = common_columns(sample, replica, unit_noise)
        table = self.chunk_table(sample)
        for side in ("student", "teacher"):
            row[f"chunk_{side}_start"] = table[f"{side}_start"].astype(np.int32)
            row[f"chunk_{side}_end"] = table[f"{side}_end"].astype(np.int32)
        row["chunk_masked"] = np.asarray(unit_noise.item_masked, dtype=bool)
        row["chunk_in_prompt"] = table["in_prompt"]
        num_chunks = row["chunk_masked"].shape[0]
        by_kind = {request.kind: request for request in requests}
        for pass_name in targets.passes:
            logprob = np.full(num_chunks, np.nan, dtype=np.float32)
            for kind in PASS_SOURCES[pass_name]:
                request = by_kind.get(kind)
                if request is None:
                    continue
                sums = chunk_sums(np.asarray(request.results["gold_logprob"]), request.items, num_chunks)
                present = ~np.isnan(sums)
                logprob[present] = sums[present]
            missing = np.flatnonzero(np.isnan(logprob) & row["chunk_masked"])
            if missing.size:
                raise _missing_targets(sample, replica, pass_name, missing.tolist())
            row[chunk_logprob_column(pass_name)] = logprob
        return row

    def num_targets(self, row: dict[str, Any]) -> int:
        return int(row["chunk_masked"].sum())

    def tail_mass(self, requests: list[TeacherRequest], passes: tuple[str, ...]) -> tuple[float, int]:
        return 0.0, 0  # chunk log-probs have no top-k tail


def _expand_ranges(starts: np.ndarray, ends: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All positions of the half-open ranges [starts, ends) and the label of the range each belongs to."""
    lengths = (ends - starts).astype(np.int64)
    if np.any(lengths <= 0):
        raise ValueError("chunk with an empty or inverted teacher range")
    total = int(lengths.sum())
    range_of = np.repeat(np.arange(lengths.shape[0]), lengths)
    offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return (starts[range_of] + offsets).astype(np.int64), labels[range_of].astype(np.int64)


def chunk_sums(values: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
    """Σ of per-position values grouped by item; NaN for items without positions. float32 (num_items,)."""
    sums = np.bincount(items, weights=values.astype(np.float64), minlength=num_items)
    present = np.bincount(items, minlength=num_items) > 0
    out = np.full(num_items, np.nan, dtype=np.float32)
    out[present] = sums[present].astype(np.float32)
    return out


BuildPipeline = SharedBuildPipeline | CrossBuildPipeline
_PIPELINES: dict[str, type] = {PIPELINE_SHARED: SharedBuildPipeline, PIPELINE_CROSS: CrossBuildPipeline}


def build_pipeline(name: str) -> BuildPipeline:
    """The stage-one view of pipeline ``name`` ("shared" or "cross")."""
    if name not in _PIPELINES:
        raise ValueError(f"pipeline={name!r}: expected one of {sorted(_PIPELINES)}")
    return _PIPELINES[name]()
