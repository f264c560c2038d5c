"""Content checks of each pipeline's target columns: top-k targets (shared) and chunk tables (cross).

Called by :class:`cache_schema.content_checks.GroupChecker` through :data:`TARGET_CHECKS`, after the columns
every cache has were checked; each returns the number of target items with teacher targets in the group.
"""

from __future__ import annotations

import numpy as np

from cache_schema.codec import SparseArrays, codec_for
from cache_schema.content_checks import ColumnList, GroupChecker, column_list, first_bad
from cache_schema.exact_checks import check_exact_pass
from cache_schema.schemas import (
    ENCODING_PACKED,
    PIPELINE_CROSS,
    PIPELINE_SHARED,
    chunk_logprob_column,
    gold_logprob_column,
    log_partitions_column,
    log_tails_column,
    topk_counts_column,
    topk_ids_column,
    topk_values_column,
)

# -- pipeline B (shared) -----------------------------------------------------------------------------------------

def check_shared_targets(check: GroupChecker, cols: dict[str, ColumnList]) -> int:
    ids, masked = cols["input_ids"], cols["masked_positions"]
    targets = column_list(check.table, "target_positions")
    items = targets.lengths
    check.in_range("target_positions", targets, ids.lengths, "len(input_ids)")
    check.ascending("target_positions", targets)
    check.member_of("target_positions", targets, masked, "masked_positions")
    check.compdemo_group(items)

    # Gold ids at the target positions (-1 where the position is out of range).
    row_of = targets.row_of
    s_ok = (targets.values >= 0) & (targets.values < ids.lengths[row_of])
    gold = np.full(targets.values.shape[0], -1, dtype=np.int64)
    gold[s_ok] = ids.values[ids.offsets[row_of[s_ok]] + targets.values[s_ok]]
    if "teacher_input_ids" in cols and check.has("target_teacher_positions"):
        _check_teacher_side(check, cols["teacher_input_ids"], targets, gold, s_ok)
    checker = _check_shared_pass_v1 if check.m.format_version == 1 else _check_sparse_pass
    sparse = check.m.format_version == 1 or check.m.targets.sparse is not None
    codec = codec_for(check.m) if sparse else None
    for pass_name in check.m.targets.passes:
        if sparse and check.has(*codec.columns(pass_name)):  # training reads the one pass it trains on
            checker(check, pass_name, items, gold)
        check_exact_pass(check, pass_name, items)  # a no-op for a cache without exact targets
    return int(items.sum())


def _check_teacher_side(check: GroupChecker, teacher: ColumnList, targets: ColumnList, gold: np.ndarray,
                        s_ok: np.ndarray) -> None:
    """Teacher positions inside the teacher sequence, and aligned pairs carrying the same token id on both
    sides (shared vocabulary)."""
    teacher_targets = column_list(check.table, "target_teacher_positions")
    pairs_ok = check.same_length("target_teacher_positions", teacher_targets, targets.lengths,
                                 "len(target_positions)")
    check.in_range("target_teacher_positions", teacher_targets, teacher.lengths, "len(teacher_input_ids)")
    if not pairs_ok.all():
        return
    row_of = targets.row_of
    t_ok = (teacher_targets.values >= 0) & (teacher_targets.values < teacher.lengths[row_of])
    both = s_ok & t_ok
    teacher_gold = np.full_like(gold, -1)
    teacher_gold[both] = teacher.values[teacher.offsets[row_of[both]] + teacher_targets.values[both]]
    rows, first = first_bad(both & (gold != teacher_gold), row_of)

    def detail(local: int) -> str:
        i = first[np.searchsorted(rows, local)]
        return f"student id {gold[i]} vs teacher id {teacher_gold[i]}"

    check.out.rows("target_teacher_positions", "aligned student and teacher tokens differ", rows, check.base,
                   detail)


def _check_sparse_pass(check: GroupChecker, pass_name: str, items: np.ndarray, gold: np.ndarray) -> None:
    """Format v2: counts within the k policy, decodable entries, distinct ids inside the slice, values
    descending from 0, log tails ≤ 0 growing with T, −inf only where every id is stored, gold log-prob ≤ 0."""
    manifest = check.m
    codec = codec_for(manifest)
    names = codec.columns(pass_name)
    lists = {name: column_list(check.table, name) for name in names}
    item_names = [topk_counts_column(pass_name), log_tails_column(pass_name), gold_logprob_column(pass_name)]
    if not all(check.same_length(n, lists[n], items, "len(target_positions)").all() for n in item_names):
        return
    counts_col = lists[topk_counts_column(pass_name)]
    counts = counts_col.values.astype(np.int64)
    row_of = counts_col.row_of
    entries = [n for n in names if n not in item_names]
    per_row = np.bincount(row_of, weights=counts, minlength=check.rows).astype(np.int64)
    if not all(check.same_length(n, lists[n], per_row, f"Σ {item_names[0]}").all() for n in entries):
        return
    vocab = int(manifest.teacher.shared_vocab_size)
    low, high = manifest.targets.sparse.k_policy.bounds()
    low = min(low, vocab)
    bad = (counts < low) | (counts > high)
    rows, first = first_bad(bad, row_of)
    check.out.rows(item_names[0], f"k outside the policy's [{low}, {high}]", rows, check.base,
                   lambda local: f"found {counts[first[np.searchsorted(rows, local)]]}")
    if codec.encoding == ENCODING_PACKED:
        codes = lists[entries[0]]
        ranks = codes.values >> np.uint32(8)
        rows, first = first_bad(ranks >= vocab, codes.row_of)
        check.out.rows(entries[0], f"ranks outside [0, teacher.shared_vocab_size={vocab})", rows, check.base,
                       lambda local: f"found {ranks[first[np.searchsorted(rows, local)]]}")
        if rows.size:
            return
    decoded = codec.decode({n: lists[n].values for n in names}, pass_name)
    _check_entries(check, entries[0], entries[-1], decoded, row_of, vocab)
    _check_tails(check, pass_name, decoded, row_of, vocab)
    gold_values = decoded.gold_logprob.astype(np.float64)
    rows, first = first_bad(gold_values > check.tol, row_of)
    check.out.rows(gold_logprob_column(pass_name), "gold log-prob is positive", rows, check.base,
                   lambda local: f"found {gold_values[first[np.searchsorted(rows, local)]]}")
    unexplained = np.isnan(gold_values) & (gold >= 0) & (gold < vocab)
    check.out.rows(gold_logprob_column(pass_name),
                   "gold log-prob is NaN although the gold id is inside the shared vocabulary",
                   np.unique(row_of[unexplained]), check.base)


def _check_entries(check: GroupChecker, field: str, values_field: str, decoded: SparseArrays, row_of: np.ndarray,
                   vocab: int) -> None:
    """Entries: ids inside the slice and distinct within an item (``field``), values descending with the
    first 0 (``values_field``; the same column for the packed encoding)."""
    item = np.repeat(np.arange(decoded.counts.shape[0]), decoded.counts)
    entry_row = row_of[item]
    ids, values = decoded.ids, decoded.values.astype(np.float64)
    rows, first = first_bad((ids < 0) | (ids >= vocab), entry_row)
    check.out.rows(field, f"ids outside [0, teacher.shared_vocab_size={vocab})", rows, check.base,
                   lambda local: f"found {ids[first[np.searchsorted(rows, local)]]}")
    starts = decoded.starts
    # Repeated ids: each item's ids sorted in a padded (items, k) array, whose short rows are filled with
    # distinct values below every id. Sorting many rows of at most k ≤ 64 costs about a tenth of one
    # lexsort over (item, id) of every entry (measured: benchmarks/bench_reader_checks.py).
    width = int(decoded.counts.max(initial=0))
    if width > 1:
        floor = min(int(ids.min()), 0) - 1
        padded = np.broadcast_to(floor - np.arange(width, dtype=np.int64), (decoded.counts.shape[0], width)).copy()
        padded[item, np.arange(ids.shape[0]) - np.repeat(starts, decoded.counts)] = ids
        padded.sort(axis=1)
        twice = (padded[:, 1:] == padded[:, :-1]).any(axis=1)
        check.out.rows(field, "an item stores an id twice", np.unique(row_of[twice]), check.base)
    nan = np.isnan(values)
    check.out.rows(values_field, "a top-k value is NaN", np.unique(entry_row[nan]), check.base)
    rising = np.zeros(ids.shape[0], dtype=bool)
    rising[1:] = (item[1:] == item[:-1]) & (values[1:] > values[:-1])  # NaN is reported above, not here
    check.out.rows(values_field, "top-k values are not sorted descending", np.unique(entry_row[rising]), check.base)
    rows, first = first_bad(~nan[starts] & ~(np.abs(values[starts]) <= check.tol), row_of)
    check.out.rows(values_field, "first top-k value is not 0 (values are logits minus the row max)", rows, check.base,
                   lambda local: f"found {values[starts][first[np.searchsorted(rows, local)]]}")


def _check_tails(check: GroupChecker, pass_name: str, decoded: SparseArrays, row_of: np.ndarray, vocab: int) -> None:
    """Log tails: ≤ 0, not NaN, −inf exactly where every id is stored, non-decreasing in T (the stored ids
    are the top ones, whose mass tempering can only lower), and the mass policy's target reached."""
    name = log_tails_column(pass_name)
    tails = decoded.log_tails.astype(np.float64)
    every = decoded.counts >= vocab
    bad = np.isnan(tails).any(axis=1) | (tails > check.tol).any(axis=1) | (np.isneginf(tails).any(axis=1) != every)
    check.out.rows(name, "log tails must be ≤ 0, and −inf exactly where every id of the slice is stored",
                   np.unique(row_of[bad]), check.base)
    temperatures = np.asarray(check.m.targets.temperatures, dtype=np.float64)
    order = np.argsort(temperatures)
    ordered = tails[:, order]
    with np.errstate(invalid="ignore"):
        falling = (ordered[:, :-1] > ordered[:, 1:] + check.tol * np.maximum(1.0, np.abs(ordered[:, 1:]))).any(axis=1)
    check.out.rows(name, "log tail falls as the temperature rises", np.unique(row_of[falling & ~every]), check.base)
    policy = check.m.targets.sparse.k_policy
    if policy.kind == "mass" and float(policy.temperature) in temperatures.tolist():
        column = temperatures.tolist().index(float(policy.temperature))
        short = (decoded.counts < policy.ceiling) & (-np.expm1(tails[:, column]) < policy.mass - check.tol)
        check.out.rows(name, f"an item below the k ceiling keeps less than the policy's mass {policy.mass}",
                       np.unique(row_of[short]), check.base)


def _check_shared_pass_v1(check: GroupChecker, pass_name: str, items: np.ndarray, gold: np.ndarray) -> None:
    names = (
        topk_ids_column(pass_name),
        topk_values_column(pass_name),
        log_partitions_column(pass_name),
        gold_logprob_column(pass_name),
    )
    lists = [column_list(check.table, n) for n in names]
    lengths_ok = [
        check.same_length(n, col, items, "len(target_positions)").all()
        for n, col in zip(names, lists, strict=True)
    ]
    top_ids, top_values, log_z, gold_lp = lists
    check.in_range(names[0], top_ids, int(check.m.teacher.shared_vocab_size), "teacher.shared_vocab_size")

    values = top_values.values.astype(np.float64)
    row_of = top_values.row_of
    nan = np.isnan(values)
    check.out.rows(names[1], "a top-k value is NaN", np.unique(row_of[nan.any(axis=1)]), check.base)
    unsorted = (np.diff(values, axis=1) > 0).any(axis=1)  # NaN is reported above, not here
    check.out.rows(
        names[1], "top-k values are not sorted descending", np.unique(row_of[unsorted]), check.base
    )
    if values.shape[1]:
        rows, first = first_bad(~nan[:, 0] & ~(np.abs(values[:, 0]) <= check.tol), row_of)
        check.out.rows(
            names[1],
            "first top-k value is not 0 (values are logits minus the row max)",
            rows,
            check.base,
            lambda local: f"found {values[first[np.searchsorted(rows, local)], 0]}",
        )
    logz = log_z.values.astype(np.float64)
    nonfinite = ~np.isfinite(logz).all(axis=1)
    check.out.rows(
        names[2], "log-partitions are not finite", np.unique(log_z.row_of[nonfinite]), check.base
    )
    if lengths_ok[1] and lengths_ok[2] and values.shape[0]:
        temperatures = np.asarray(check.m.targets.temperatures, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            mass = np.exp(values[:, None, :] / temperatures[None, :, None] - logz[:, :, None]).sum(axis=2)
        mass_rows, mass_first = first_bad(~(mass <= 1.0 + check.tol).all(axis=1), row_of)
        check.out.rows(
            names[2],
            f"top-k probability mass exceeds 1 (+{check.tol}) at some temperature",
            mass_rows,
            check.base,
            lambda local: f"mass {mass[mass_first[np.searchsorted(mass_rows, local)]].max():.6f}",
        )
    gold_values = gold_lp.values.astype(np.float64)
    rows, first = first_bad(gold_values > check.tol, gold_lp.row_of)
    check.out.rows(
        names[3],
        "gold log-prob is positive",
        rows,
        check.base,
        lambda local: f"found {gold_values[first[np.searchsorted(rows, local)]]}",
    )
    if lengths_ok[3]:
        shared_vocab = int(check.m.teacher.shared_vocab_size)
        unexplained = np.isnan(gold_values) & (gold >= 0) & (gold < shared_vocab)
        check.out.rows(
            names[3],
            "gold log-prob is NaN although the gold id is inside the shared vocabulary",
            np.unique(gold_lp.row_of[unexplained]),
            check.base,
        )

# -- pipeline A (cross) -----------------------------------------------------------------------------------------

def check_cross_targets(check: GroupChecker, cols: dict[str, ColumnList]) -> int:
    ids, masked = cols["input_ids"], cols["masked_positions"]
    s_start = column_list(check.table, "chunk_student_start")
    # Training reads no teacher-side columns: their checks run where the row group holds them (validate).
    teacher_side = "teacher_input_ids" in cols and check.has("chunk_teacher_start", "chunk_teacher_end")
    names = ("chunk_student_end", "chunk_masked", "chunk_in_prompt")
    others = {n: column_list(check.table, n)
              for n in names + (("chunk_teacher_start", "chunk_teacher_end") if teacher_side else ())}
    items = s_start.lengths
    aligned = all(
        check.same_length(n, col, items, "len(chunk_student_start)").all() for n, col in others.items()
    )
    check.compdemo_group(items)
    if not aligned:
        return int(
            np.count_nonzero(others["chunk_masked"].values)
        )  # chunk columns disagree: reported above
    chunk_row = s_start.row_of
    flags = others["chunk_masked"].values.astype(bool)

    def bounds(side: str, lo: np.ndarray, hi: np.ndarray, length: np.ndarray, what: str) -> np.ndarray:
        bad = (lo < 0) | (hi <= lo) | (hi > length[chunk_row])
        rows, first = first_bad(bad, chunk_row)

        def detail(local: int) -> str:
            i = first[np.searchsorted(rows, local)]
            return f"chunk {i - s_start.offsets[local]}: [{lo[i]}, {hi[i]})"

        check.out.rows(
            f"chunk_{side}_start/end",
            f"chunk bounds not 0 <= start < end <= {what}",
            rows,
            check.base,
            detail,
        )
        return ~bad

    s_ok = bounds(
        "student", s_start.values, others["chunk_student_end"].values, ids.lengths, "len(input_ids)"
    )
    if teacher_side:
        bounds("teacher", others["chunk_teacher_start"].values, others["chunk_teacher_end"].values,
               cols["teacher_input_ids"].lengths, "len(teacher_input_ids)")
    prompt = others["chunk_in_prompt"].values.astype(bool)
    check.out.rows(
        "chunk_masked",
        "a prompt chunk is masked (prompt tokens are never maskable)",
        np.unique(chunk_row[flags & prompt]),
        check.base,
    )

    # Chunk consistency between chunk_masked and masked_positions.
    position_ok = (masked.values >= 0) & (masked.values < ids.lengths[masked.row_of])
    is_masked = np.zeros(ids.values.shape[0], dtype=bool)
    is_masked[ids.offsets[masked.row_of[position_ok]] + masked.values[position_ok]] = True
    prefix = np.concatenate([[0], np.cumsum(is_masked)])
    where = np.flatnonzero(s_ok)
    start = ids.offsets[chunk_row[where]] + s_start.values[where]
    stop = ids.offsets[chunk_row[where]] + others["chunk_student_end"].values[where]
    count = prefix[stop] - prefix[start]
    if check.m.noise.chunk_consistent:
        bad_items = np.where(flags[where], count != stop - start, count != 0)
        message = "chunk_masked disagrees with masked_positions (a chunk is fully masked or not at all)"
    else:
        bad_items = flags[where] != (count > 0)
        message = "chunk_masked disagrees with masked_positions (masked iff any of its tokens is)"
    check.out.rows("chunk_masked", message, np.unique(chunk_row[where[bad_items]]), check.base)

    for pass_name in check.m.targets.passes:
        if check.has(chunk_logprob_column(pass_name)):  # training reads the one pass it trains on
            _check_cross_pass(check, pass_name, items, flags, s_start)
    return int(np.count_nonzero(flags))

def _check_cross_pass(check: GroupChecker, pass_name: str, items: np.ndarray, flags: np.ndarray, chunks: ColumnList) -> None:
    name = chunk_logprob_column(pass_name)
    col = column_list(check.table, name)
    if not check.same_length(name, col, items, "len(chunk_student_start)").all():
        return
    values = col.values.astype(np.float64)
    wrong = np.where(flags, ~(np.isfinite(values) & (values <= check.tol)), ~np.isnan(values))
    rows, first = first_bad(wrong, chunks.row_of)

    def detail(local: int) -> str:
        i = first[np.searchsorted(rows, local)]
        return f"chunk {i - chunks.offsets[local]}: masked={bool(flags[i])}, value={values[i]}"

    check.out.rows(
        name,
        "chunk log-prob must be finite and <= 0 where the chunk is masked, NaN where it is not",
        rows,
        check.base,
        detail,
    )


TARGET_CHECKS = {PIPELINE_SHARED: check_shared_targets, PIPELINE_CROSS: check_cross_targets}
# The column a row group must hold for its pipeline's target checks to run (a run without teacher targets
# reads none of them).
TARGET_KEY_COLUMN = {PIPELINE_SHARED: "target_positions", PIPELINE_CROSS: "chunk_student_start"}
