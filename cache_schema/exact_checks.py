"""Content checks of a pass's exact-target columns (:mod:`cache_schema.exact_targets`).

Per target item: one hidden state of the manifest's width (the column type fixes the width), finite values
(no bf16 NaN or infinity bit pattern), int8 codes in [−127, 127] and a finite, non-negative scale.
Called from :func:`cache_schema.target_checks.check_shared_targets` for every pass of a cache that stores
exact targets.
"""

from __future__ import annotations

import numpy as np

from cache_schema.content_checks import GroupChecker, column_list, first_bad
from cache_schema.exact_targets import INT8_LEVELS, hidden_column, hidden_scale_column

_BF16_EXPONENT = 0x7F80  # all exponent bits set: infinity or NaN


def check_exact_pass(check: GroupChecker, pass_name: str, items: np.ndarray) -> None:
    """The exact-target columns of ``pass_name`` in a row group with ``items`` target items per row."""
    exact = check.m.targets.exact
    name = hidden_column(pass_name)
    if exact is None or not check.has(name):  # training reads the exact columns of its one pass only
        return
    codec = exact.codec()
    hidden = column_list(check.table, name)
    if not check.same_length(name, hidden, items, "len(target_positions)").all():
        return
    codes = codec.unpack(hidden.values)
    if codec.has_scale:
        rows, _ = first_bad((np.abs(codes.astype(np.int64)) > INT8_LEVELS).any(axis=1), hidden.row_of)
        check.out.rows(name, f"int8 codes outside [−{INT8_LEVELS}, {INT8_LEVELS}]", rows, check.base)
        scale_name = hidden_scale_column(pass_name)
        scale = column_list(check.table, scale_name)
        if check.same_length(scale_name, scale, items, "len(target_positions)").all():
            values = scale.values.astype(np.float64)
            rows, first = first_bad(~(np.isfinite(values) & (values >= 0)), scale.row_of)
            check.out.rows(scale_name, "scale is not a finite non-negative number", rows, check.base,
                           lambda local: f"found {values[first[np.searchsorted(rows, local)]]}")
        return
    bits = codes.view(np.uint16)
    rows, _ = first_bad(((bits & _BF16_EXPONENT) == _BF16_EXPONENT).any(axis=1), hidden.row_of)
    check.out.rows(name, "hidden state holds a bf16 infinity or NaN", rows, check.base)
