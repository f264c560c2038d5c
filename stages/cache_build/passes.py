"""Noise and teacher passes of one work unit (sample, replica), as plain numpy.

For a prepared sample and a replica this module draws the noise from the counter-based generator
(``tide.noise``), derives the target items, and lists the teacher forwards ("requests") the unit needs:

* pipeline ``shared`` (B): the student mask is drawn over maskable positions; target items are the masked
  student positions that have an aligned teacher position (ascending). A request masks the teacher at
  the aligned teacher positions of its items and asks for top-k targets there.
* pipeline ``cross`` (A): the student mask is made chunk-consistent (any masked token masks its chunk);
  target items are the chunks of the table (all of them, ``chunk_masked`` tells which carry targets).
  A request masks every teacher token of its chunks and asks for the gold log-probs of those tokens,
  which are summed per chunk afterwards.

Passes: ``plain`` masks every masked item. ``compdemo`` is two forwards: pass 1 reveals group A and masks
group B (targets for B items), pass 2 reveals B and masks A (targets for A items). Group A is the split
stream's True (``compdemo_group`` 0), group B its False (``compdemo_group`` 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Teacher forwards a unit may need: the plain pass and the two CompDemo passes.
PLAIN = "plain"
COMPDEMO_1 = "compdemo_1"  # reveals group A (0), masks group B (1): targets for group B
COMPDEMO_2 = "compdemo_2"  # reveals group B (1), masks group A (0): targets for group A
GROUP_A = 0
GROUP_B = 1


@dataclass
class UnitNoise:
    """The drawn noise of one (sample, replica) and its target items.

    Attributes:
        t: the timestep in (0, 1].
        masked_positions: int32 (M,), sorted student positions masked by the plain noise (chunk-consistent
            for pipeline A).
        item_masked: bool (I,), per target item whether it is masked (always True for pipeline B items).
        compdemo_group: uint8 (I,), 0 = group A, 1 = group B; empty if CompDemo is not built.
        target_positions / target_teacher_positions: int32 (I,), pipeline B only.
    """

    t: float
    masked_positions: np.ndarray
    item_masked: np.ndarray
    compdemo_group: np.ndarray
    target_positions: np.ndarray | None = None
    target_teacher_positions: np.ndarray | None = None


@dataclass
class TeacherRequest:
    """One teacher forward of one unit.

    Attributes:
        unit: index of the unit inside its shard (row order).
        kind: ``PLAIN``, ``COMPDEMO_1`` or ``COMPDEMO_2``.
        noised_ids: int64 (T,), teacher clean ids with the request's masked tokens set to the mask id.
        clean_ids: int64 (T,), the teacher clean ids.
        positions: int64 (P,), teacher positions whose outputs are wanted (ascending).
        items: int64 (P,), the target item each position belongs to (pipeline A: chunk index; B: item index).
    """

    unit: int
    kind: str
    noised_ids: np.ndarray
    clean_ids: np.ndarray
    positions: np.ndarray
    items: np.ndarray
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return int(self.noised_ids.shape[0])


def draw_unit_noise(
    sample: Any,
    replica: int,
    *,
    pipeline: str,
    seed: int,
    eps: float,
    demo_ratio: float,
    compdemo: bool,
) -> UnitNoise:
    """Draw t, the student mask, the target items and the CompDemo split of one (sample, replica).

    ``sample`` is a ``stages.cache_build.preparation.PreparedSample``: ``sample_key``, ``maskable`` (L,), and for
    pipeline B ``student_pos``/``teacher_pos`` (aligned pairs), for A ``chunks`` (the chunk table).
    """
    from tide import noise

    key = int(sample.sample_key)
    t = float(noise.draw_timestep(seed, key, replica, eps=eps))
    maskable = np.asarray(sample.maskable, dtype=bool)
    mask = np.asarray(noise.draw_mask(seed, key, replica, maskable, t), dtype=bool)
    if pipeline == "shared":
        student_pos, teacher_pos = aligned_pairs(sample)
        order = np.argsort(student_pos, kind="stable")
        student_pos, teacher_pos = student_pos[order], teacher_pos[order]
        hit = mask[student_pos]
        targets = student_pos[hit].astype(np.int32)
        teacher_targets = teacher_pos[hit].astype(np.int32)
        groups = _split_groups(noise, seed, key, replica, targets, demo_ratio) if compdemo else _no_groups()
        return UnitNoise(
            t=t,
            masked_positions=np.flatnonzero(mask).astype(np.int32),
            item_masked=np.ones(targets.shape[0], dtype=bool),
            compdemo_group=groups,
            target_positions=targets,
            target_teacher_positions=teacher_targets,
        )
    if pipeline == "cross":
        table = chunk_table(sample)
        expanded, chunk_masked = noise.chunk_consistent_mask(mask, table["student_start"], table["student_end"])
        expanded = np.asarray(expanded, dtype=bool)
        chunk_masked = np.asarray(chunk_masked, dtype=bool)
        num_chunks = table["student_start"].shape[0]
        indices = np.arange(num_chunks, dtype=np.int64)
        groups = _split_groups(noise, seed, key, replica, indices, demo_ratio) if compdemo else _no_groups()
        return UnitNoise(
            t=t,
            masked_positions=np.flatnonzero(expanded).astype(np.int32),
            item_masked=chunk_masked,
            compdemo_group=groups,
        )
    raise ValueError(f"pipeline={pipeline!r}: expected 'cross' or 'shared'")


def _split_groups(noise: Any, seed: int, key: int, replica: int, indices: np.ndarray, demo_ratio: float) -> np.ndarray:
    if indices.shape[0] == 0:
        return np.zeros(0, dtype=np.uint8)
    in_group_a = np.asarray(noise.draw_compdemo_split(seed, key, replica, indices, demo_ratio=demo_ratio), dtype=bool)
    return np.where(in_group_a, GROUP_A, GROUP_B).astype(np.uint8)


def _no_groups() -> np.ndarray:
    return np.zeros(0, dtype=np.uint8)


def aligned_pairs(sample: Any) -> tuple[np.ndarray, np.ndarray]:
    """(student positions, teacher positions) int64 arrays of a pipeline-B prepared sample."""
    if sample.student_pos is None or sample.teacher_pos is None:
        raise ValueError(f"sample {sample.sample_id}: no aligned positions (was it prepared for pipeline 'shared'?)")
    student = np.asarray(sample.student_pos, dtype=np.int64)
    teacher = np.asarray(sample.teacher_pos, dtype=np.int64)
    if student.shape != teacher.shape:
        raise ValueError(
            f"sample {sample.sample_id}: student_pos {student.shape} and teacher_pos {teacher.shape} differ in shape"
        )
    return student, teacher


def chunk_table(sample: Any) -> dict[str, np.ndarray]:
    """The chunk table of a pipeline-A prepared sample as int64/bool arrays, shape (C,) each.

    Keys: ``student_start``, ``student_end``, ``teacher_start``, ``teacher_end`` (end exclusive) and
    ``in_prompt``.
    """
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


def pass_kinds(passes: list[str]) -> list[str]:
    """Teacher forwards needed for the stored passes."""
    kinds = []
    if "plain" in passes:
        kinds.append(PLAIN)
    if "compdemo" in passes:
        kinds += [COMPDEMO_1, COMPDEMO_2]
    return kinds


def items_of_pass(kind: str, item_masked: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Indices of the target items a forward masks (and produces targets for)."""
    if kind == PLAIN:
        return np.flatnonzero(item_masked)
    if kind == COMPDEMO_1:
        return np.flatnonzero(item_masked & (groups == GROUP_B))
    if kind == COMPDEMO_2:
        return np.flatnonzero(item_masked & (groups == GROUP_A))
    raise ValueError(f"unknown teacher pass kind {kind!r}")


def build_requests(
    unit: int,
    sample: Any,
    unit_noise: UnitNoise,
    *,
    pipeline: str,
    kinds: list[str],
    teacher_mask_id: int,
) -> list[TeacherRequest]:
    """The teacher forwards of one unit; a forward with nothing masked is left out."""
    clean = np.asarray(sample.teacher_input_ids, dtype=np.int64)
    requests = []
    for kind in kinds:
        items = items_of_pass(kind, unit_noise.item_masked, unit_noise.compdemo_group)
        if items.shape[0] == 0:
            continue
        if pipeline == "shared":
            positions = unit_noise.target_teacher_positions[items].astype(np.int64)
            item_of_position = items.astype(np.int64)
        else:
            table = chunk_table(sample)
            starts, ends = table["teacher_start"][items], table["teacher_end"][items]
            positions, item_of_position = _expand_ranges(starts, ends, items)
        order = np.argsort(positions, kind="stable")
        positions, item_of_position = positions[order], item_of_position[order]
        noised = clean.copy()
        noised[positions] = teacher_mask_id
        requests.append(TeacherRequest(unit, kind, noised, clean, positions, item_of_position))
    return requests


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


# --------------------------------------------------------------------------------------------------------
# Batching by length and running the teacher
# --------------------------------------------------------------------------------------------------------


def forward_cost_factor(pipeline: str, regime: str) -> int:
    """Sequence copies one teacher forward processes per teacher token: 2 where the layout concatenates
    x0 (WeDLM paper, LLaDA2 native and WeDLM native), 1 for LLaDA2 paper (x_t alone)."""
    return 1 if (pipeline == "cross" and regime == "paper") else 2


def pack_batches(
    requests: list[TeacherRequest], *, batch_tokens: int, batch_rows: int | None, cost_factor: int = 1
) -> list[list[TeacherRequest]]:
    """Group requests into teacher batches, longest first, so sequences of similar length share a batch.

    A batch holds as many requests as fit ``rows × longest length × cost_factor ≤ batch_tokens`` (and at
    most ``batch_rows`` rows); a request longer than the budget gets a batch of its own. The order inside
    the window is a stable sort by descending length, so batches are a pure function of the requests.
    """
    order = sorted(range(len(requests)), key=lambda i: -requests[i].length)
    batches: list[list[TeacherRequest]] = []
    current: list[TeacherRequest] = []
    longest = 0
    for index in order:
        request = requests[index]
        longest_if_added = max(longest, request.length)
        rows_if_added = len(current) + 1
        over_tokens = rows_if_added * longest_if_added * cost_factor > batch_tokens
        over_rows = batch_rows is not None and rows_if_added > batch_rows
        if current and (over_tokens or over_rows):
            batches.append(current)
            current, longest_if_added = [], request.length
        current.append(request)
        longest = longest_if_added
    if current:
        batches.append(current)
    return batches


def run_teacher_batch(
    runner: Any,
    batch: list[TeacherRequest],
    *,
    pipeline: str,
    device: Any,
    pad_id: int,
    k: int | None = None,
    shared_vocab_size: int | None = None,
    temperatures: list[float] | None = None,
) -> int:
    """Run one teacher forward over ``batch`` and store each request's results (numpy) in ``results``.

    Pipeline ``shared``: ``topk_ids`` int32 (P, k), ``topk_values`` / ``log_partitions`` / ``gold_logprob``
    float32; pipeline ``cross``: ``gold_logprob`` float32 (P,). Returns the padded token count of the
    batch (rows × longest length).
    """
    import torch

    lengths = np.asarray([r.length for r in batch], dtype=np.int64)
    width = int(lengths.max())
    noised = np.full((len(batch), width), pad_id, dtype=np.int64)
    clean = np.full((len(batch), width), pad_id, dtype=np.int64)
    for row, request in enumerate(batch):
        noised[row, : request.length] = request.noised_ids
        clean[row, : request.length] = request.clean_ids
    counts = np.asarray([r.positions.shape[0] for r in batch], dtype=np.int64)
    row_index = np.repeat(np.arange(len(batch), dtype=np.int64), counts)
    position = np.concatenate([r.positions for r in batch])
    gold = clean[row_index, position]

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(device)

    args = (tensor(noised), tensor(lengths), tensor(row_index), tensor(position), tensor(gold))
    splits = np.cumsum(counts)[:-1]
    if pipeline == "cross":
        logprob = runner.gold_logprobs(*args, clean_ids=tensor(clean)).float().cpu().numpy()
        for request, part in zip(batch, np.split(logprob, splits), strict=True):
            request.results = {"gold_logprob": part}
        return int(len(batch) * width)
    found = runner.topk_targets(
        *args, k=k, shared_vocab_size=shared_vocab_size, temperatures=list(temperatures or [1.0]),
        clean_ids=tensor(clean),
    )
    fields = (found.topk_ids, found.topk_values, found.log_partitions, found.gold_logprob)
    arrays = [t.cpu().numpy() for t in fields]
    parts = [np.split(a, splits) for a in arrays]
    for index, request in enumerate(batch):
        request.results = {
            "topk_ids": parts[0][index].astype(np.int32),
            "topk_values": parts[1][index].astype(np.float32),
            "log_partitions": parts[2][index].astype(np.float32),
            "gold_logprob": parts[3][index].astype(np.float32),
        }
    return int(len(batch) * width)
