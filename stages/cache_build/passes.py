"""Teacher passes of one work unit (sample, replica) and the batching of teacher forwards, as plain numpy.

Passes: ``plain`` masks every masked target item. ``compdemo`` is two forwards: pass 1 reveals group A and
masks group B (targets for B items), pass 2 reveals B and masks A (targets for A items). Group A is the
split stream's True (``compdemo_group`` 0), group B its False (``compdemo_group`` 1). What a target item is
(an aligned position, a chunk) is the pipeline's business (:mod:`stages.cache_build.pipelines`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tide import noise

# Teacher forwards a unit may need: the plain pass and the two CompDemo passes.
PLAIN = "plain"
COMPDEMO_1 = "compdemo_1"  # reveals group A (0), masks group B (1): targets for group B
COMPDEMO_2 = "compdemo_2"  # reveals group B (1), masks group A (0): targets for group A
GROUP_A = 0
GROUP_B = 1
# The forwards whose results fill each stored pass's columns.
PASS_SOURCES = {"plain": (PLAIN,), "compdemo": (COMPDEMO_1, COMPDEMO_2)}


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


def draw_timestep_and_mask(sample: Any, replica: int, *, seed: int, eps: float) -> tuple[float, np.ndarray]:
    """(t, student token mask bool (L,)) of one (sample, replica) from the counter-based generator."""
    key = int(sample.sample_key)
    t = float(noise.draw_timestep(seed, key, replica, eps=eps))
    maskable = np.asarray(sample.maskable, dtype=bool)
    return t, np.asarray(noise.draw_mask(seed, key, replica, maskable, t), dtype=bool)


def compdemo_groups(sample: Any, replica: int, indices: np.ndarray, *, seed: int, demo_ratio: float) -> np.ndarray:
    """uint8 group per target item index: 0 (A, the split stream's True) or 1 (B); empty for no items."""
    if indices.shape[0] == 0:
        return np.zeros(0, dtype=np.uint8)
    in_group_a = np.asarray(
        noise.draw_compdemo_split(seed, int(sample.sample_key), replica, indices, demo_ratio=demo_ratio), dtype=bool)
    return np.where(in_group_a, GROUP_A, GROUP_B).astype(np.uint8)


def no_groups() -> np.ndarray:
    return np.zeros(0, dtype=np.uint8)


def pass_kinds(passes: list[str]) -> list[str]:
    """Teacher forwards needed for the stored passes."""
    return [kind for name in ("plain", "compdemo") if name in passes for kind in PASS_SOURCES[name]]


def items_of_pass(kind: str, item_masked: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Indices of the target items a forward masks (and produces targets for)."""
    if kind == PLAIN:
        return np.flatnonzero(item_masked)
    if kind == COMPDEMO_1:
        return np.flatnonzero(item_masked & (groups == GROUP_B))
    if kind == COMPDEMO_2:
        return np.flatnonzero(item_masked & (groups == GROUP_A))
    raise ValueError(f"unknown teacher pass kind {kind!r}")


def make_request(unit: int, kind: str, clean: np.ndarray, positions: np.ndarray, items: np.ndarray,
                 teacher_mask_id: int) -> TeacherRequest:
    """A forward that masks the teacher at ``positions`` (each labelled with its target item)."""
    order = np.argsort(positions, kind="stable")
    positions, items = positions[order], items[order]
    noised = clean.copy()
    noised[positions] = teacher_mask_id
    return TeacherRequest(unit, kind, noised, clean, positions, items)


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


@dataclass
class PaddedBatch:
    """One teacher batch as arrays: ``noised`` / ``clean`` int64 (B, W) right-padded, ``lengths`` (B,),
    the wanted outputs ``row_index`` / ``position`` / ``gold`` (N,), and ``splits`` to cut per-request
    results out of an (N, ...) result (``np.split(result, splits)``)."""

    noised: np.ndarray
    clean: np.ndarray
    lengths: np.ndarray
    row_index: np.ndarray
    position: np.ndarray
    gold: np.ndarray
    splits: np.ndarray

    @property
    def padded_tokens(self) -> int:
        return int(self.noised.shape[0] * self.noised.shape[1])


def pad_batch(batch: list[TeacherRequest], pad_id: int) -> PaddedBatch:
    """The arrays of one teacher forward over ``batch``."""
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
    return PaddedBatch(noised, clean, lengths, row_index, position, clean[row_index, position],
                       np.cumsum(counts)[:-1])
