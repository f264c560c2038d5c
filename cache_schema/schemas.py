"""Arrow schemas of the cache formats (v2, and v1 for reading) and a columnar table builder.

One row is one (sample, replica). Columns common to both pipelines come first, then the pipeline's target
item columns, then one group of columns per stored teacher pass (``plain``, ``compdemo``). Every column is
non-nullable; ragged columns are ``list<...>`` with 32-bit offsets, and per-item vectors of fixed width
(log tails per temperature; v1's top-k ids and values and log-partitions) are ``fixed_size_list`` inside
the list. A v2 ``shared`` pass stores its sparse targets in the columns of its encoding
(:data:`SPARSE_ENCODINGS`, bit layout in :mod:`cache_schema.codec`): a ragged number of top entries per item.

``table_from_rows`` builds a table from per-row numpy arrays without per-element Python work: each list
column is one ``np.concatenate`` of the rows' arrays plus a cumulative-sum offsets vector.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from cache_schema.errors import RowError, SchemaError

PIPELINE_CROSS = "cross"
PIPELINE_SHARED = "shared"
PIPELINES: tuple[str, ...] = (PIPELINE_CROSS, PIPELINE_SHARED)
PASSES: tuple[str, ...] = ("plain", "compdemo")
VALUE_DTYPES: dict[str, pa.DataType] = {"float16": pa.float16(), "float32": pa.float32()}

# Format v2 sparse-target encodings: the default packs a frequency rank and a quantised value into one
# uint32 word per entry; ``float32`` keeps ids and values as they are (exact, 2-3x the bytes).
ENCODING_PACKED = "rank24-delta8"
ENCODING_FLOAT32 = "float32"
SPARSE_ENCODINGS: tuple[str, ...] = (ENCODING_PACKED, ENCODING_FLOAT32)

# Columns present in every cache, in schema order.
COMMON_COLUMNS: tuple[str, ...] = (
    "sample_id",
    "sample_key",
    "replica",
    "t",
    "input_ids",
    "maskable",
    "masked_positions",
    "teacher_input_ids",
    "compdemo_group",
)
# The columns every training run reads, whatever the pipeline and mode (the reader's content checks use
# them to tell a training read from a bookkeeping one).
TRAINING_BASE_COLUMNS: tuple[str, ...] = ("sample_id", "replica", "t", "input_ids", "maskable", "masked_positions")
SHARED_ITEM_COLUMNS: tuple[str, ...] = ("target_positions", "target_teacher_positions")
CROSS_ITEM_COLUMNS: tuple[str, ...] = (
    "chunk_student_start",
    "chunk_student_end",
    "chunk_teacher_start",
    "chunk_teacher_end",
    "chunk_masked",
    "chunk_in_prompt",
)


def topk_ids_column(pass_name: str) -> str:
    """Name of the top-k id column of a pass (pipeline ``shared``)."""
    return f"{_check_pass(pass_name)}_topk_ids"


def topk_values_column(pass_name: str) -> str:
    """Name of the top-k value column of a pass (pipeline ``shared``)."""
    return f"{_check_pass(pass_name)}_topk_values"


def log_partitions_column(pass_name: str) -> str:
    """Name of the per-temperature log-partition column of a pass (pipeline ``shared``)."""
    return f"{_check_pass(pass_name)}_log_partitions"


def gold_logprob_column(pass_name: str) -> str:
    """Name of the gold-token log-prob column of a pass (pipeline ``shared``)."""
    return f"{_check_pass(pass_name)}_gold_logprob"


def topk_counts_column(pass_name: str) -> str:
    """Name of the per-item number of stored entries of a pass (format v2, pipeline ``shared``)."""
    return f"{_check_pass(pass_name)}_topk_counts"


def topk_codes_column(pass_name: str) -> str:
    """Name of the packed rank|value words of a pass (format v2, encoding ``rank24-delta8``)."""
    return f"{_check_pass(pass_name)}_topk_codes"


def log_tails_column(pass_name: str) -> str:
    """Name of the per-temperature log tail masses of a pass (format v2, pipeline ``shared``)."""
    return f"{_check_pass(pass_name)}_log_tails"


def chunk_logprob_column(pass_name: str) -> str:
    """Name of the chunk log-prob column of a pass (pipeline ``cross``)."""
    return f"{_check_pass(pass_name)}_chunk_logprob"


def pass_columns(pipeline: str, pass_name: str, *, format_version: int = 2,
                 encoding: str = ENCODING_PACKED) -> tuple[str, ...]:
    """The columns that one teacher pass contributes to a pipeline's schema."""
    if _check_pipeline(pipeline) == PIPELINE_CROSS:
        return (chunk_logprob_column(pass_name),)
    if format_version == 1:
        return (
            topk_ids_column(pass_name),
            topk_values_column(pass_name),
            log_partitions_column(pass_name),
            gold_logprob_column(pass_name),
        )
    entries = ((topk_codes_column(pass_name),) if _check_encoding(encoding) == ENCODING_PACKED
               else (topk_ids_column(pass_name), topk_values_column(pass_name)))
    return (topk_counts_column(pass_name), *entries, log_tails_column(pass_name), gold_logprob_column(pass_name))


def item_columns(pipeline: str) -> tuple[str, ...]:
    """The per-target-item columns (one entry per target position or chunk) that every pass shares."""
    return SHARED_ITEM_COLUMNS if _check_pipeline(pipeline) == PIPELINE_SHARED else CROSS_ITEM_COLUMNS


def _check_pass(pass_name: str) -> str:
    if pass_name not in PASSES:
        raise SchemaError(f"unknown teacher pass {pass_name!r}; expected one of {list(PASSES)}")
    return pass_name


def _check_encoding(encoding: str) -> str:
    if encoding not in SPARSE_ENCODINGS:
        raise SchemaError(f"unknown sparse-target encoding {encoding!r}; expected one of {list(SPARSE_ENCODINGS)}")
    return encoding


def _check_pipeline(pipeline: str) -> str:
    if pipeline not in PIPELINES:
        raise SchemaError(f"unknown pipeline {pipeline!r}; expected one of {list(PIPELINES)}")
    return pipeline


def _check_passes(passes: Iterable[str]) -> list[str]:
    passes = list(passes)
    if not passes:
        raise SchemaError("a cache must hold at least one teacher pass; got passes=[]")
    if len(set(passes)) != len(passes):
        raise SchemaError(f"teacher passes listed twice: {passes}")
    for name in passes:
        _check_pass(name)
    # Schema order follows PASSES so that the same set of passes always gives the same schema.
    return [name for name in PASSES if name in passes]


def _field(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=False)


def _common_fields() -> list[pa.Field]:
    i32_list = pa.list_(pa.int32())
    return [
        _field("sample_id", pa.string()),
        _field("sample_key", pa.int64()),
        _field("replica", pa.int32()),
        _field("t", pa.float64()),
        _field("input_ids", i32_list),
        _field("maskable", pa.list_(pa.bool_())),
        _field("masked_positions", i32_list),
        _field("teacher_input_ids", i32_list),
        _field("compdemo_group", pa.list_(pa.uint8())),
    ]


def _check_positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SchemaError(f"{name} must be a positive integer; got {value!r}")
    return value


def shared_schema(*, encoding: str = ENCODING_PACKED, num_temperatures: int, passes: Iterable[str],
                  sparse: bool = True) -> pa.Schema:
    """Arrow schema of a format-v2 pipeline-B ("shared") cache.

    Args:
        encoding: the sparse-target encoding, one of :data:`SPARSE_ENCODINGS`.
        num_temperatures: number of stored temperatures n_T (>= 1, the first being 1.0).
        passes: the teacher passes present, a non-empty subset of ``("plain", "compdemo")``.
        sparse: False for a cache of exact targets alone (no sparse pass columns; the exact columns are
            added by :func:`cache_schema.exact_targets.with_exact_columns`).
    """
    _check_positive("num_temperatures", num_temperatures)
    exact = _check_encoding(encoding) == ENCODING_FLOAT32
    small = pa.float32() if exact else pa.float16()
    fields = _common_fields()
    fields += [_field(name, pa.list_(pa.int32())) for name in SHARED_ITEM_COLUMNS]
    names = _check_passes(passes)
    for name in names if sparse else ():
        fields.append(_field(topk_counts_column(name), pa.list_(pa.uint32())))
        if exact:
            fields += [_field(topk_ids_column(name), pa.list_(pa.int32())),
                       _field(topk_values_column(name), pa.list_(pa.float32()))]
        else:
            fields.append(_field(topk_codes_column(name), pa.list_(pa.uint32())))
        fields += [_field(log_tails_column(name), pa.list_(pa.list_(small, num_temperatures))),
                   _field(gold_logprob_column(name), pa.list_(small))]
    return pa.schema(fields, metadata={"tide_cache_pipeline": PIPELINE_SHARED})


def shared_schema_v1(*, k: int, value_dtype: str, num_temperatures: int, passes: Iterable[str]) -> pa.Schema:
    """Arrow schema of a format-v1 pipeline-B cache (fixed k, log-partitions), kept for reading v1 caches.

    Args:
        k: number of top-k entries stored per target position (>= 1).
        value_dtype: ``"float16"`` or ``"float32"`` for the top-k values.
        num_temperatures: number of stored temperatures n_T (>= 1, the first being 1.0).
        passes: the teacher passes present, a non-empty subset of ``("plain", "compdemo")``.
    """
    _check_positive("k", k)
    if value_dtype not in VALUE_DTYPES:
        raise SchemaError(f"value_dtype must be one of {list(VALUE_DTYPES)}; got {value_dtype!r}")
    _check_positive("num_temperatures", num_temperatures)
    fields = _common_fields()
    fields += [_field(name, pa.list_(pa.int32())) for name in SHARED_ITEM_COLUMNS]
    for name in _check_passes(passes):
        fields += [
            _field(topk_ids_column(name), pa.list_(pa.list_(pa.int32(), k))),
            _field(topk_values_column(name), pa.list_(pa.list_(VALUE_DTYPES[value_dtype], k))),
            _field(log_partitions_column(name), pa.list_(pa.list_(pa.float32(), num_temperatures))),
            _field(gold_logprob_column(name), pa.list_(pa.float32())),
        ]
    return pa.schema(fields, metadata={"tide_cache_pipeline": PIPELINE_SHARED})


def cross_schema(*, passes: Iterable[str]) -> pa.Schema:
    """Arrow schema of a pipeline-A ("cross") cache with the given teacher passes present."""
    fields = _common_fields()
    fields += [_field(name, pa.list_(pa.int32())) for name in CROSS_ITEM_COLUMNS[:4]]
    fields += [_field(name, pa.list_(pa.bool_())) for name in CROSS_ITEM_COLUMNS[4:]]
    for name in _check_passes(passes):
        fields.append(_field(chunk_logprob_column(name), pa.list_(pa.float32())))
    return pa.schema(fields, metadata={"tide_cache_pipeline": PIPELINE_CROSS})


def schema_for(
    pipeline: str,
    *,
    passes: Iterable[str],
    num_temperatures: int = 1,
    encoding: str = ENCODING_PACKED,
    sparse: bool = True,
) -> pa.Schema:
    """The format-v2 schema of either pipeline; ``encoding``, ``num_temperatures`` and ``sparse`` matter for
    ``shared``."""
    if _check_pipeline(pipeline) == PIPELINE_SHARED:
        return shared_schema(encoding=encoding, num_temperatures=num_temperatures, passes=passes, sparse=sparse)
    return cross_schema(passes=passes)


def schemas_match(found: pa.Schema, expected: pa.Schema) -> list[str]:
    """Differences between two schemas by column name, type and order (metadata ignored); empty if equal."""
    differences: list[str] = []
    found_names, expected_names = found.names, expected.names
    missing = [n for n in expected_names if n not in found_names]
    extra = [n for n in found_names if n not in expected_names]
    if missing:
        differences.append(f"missing columns {missing}")
    if extra:
        differences.append(f"unexpected columns {extra}")
    for name in expected_names:
        if name in found_names:
            found_type, expected_type = found.field(name).type, expected.field(name).type
            if not found_type.equals(expected_type):
                differences.append(f"column {name!r} has type {found_type}, expected {expected_type}")
    if not missing and not extra and found_names != expected_names:
        differences.append(f"columns are in order {found_names}, expected {expected_names}")
    return differences


# ---------------------------------------------------------------------------------------------------------
# Columnar builder
# ---------------------------------------------------------------------------------------------------------

_INT32_MAX = np.iinfo(np.int32).max


def _numpy_dtype(type_: pa.DataType) -> np.dtype:
    return np.dtype(type_.to_pandas_dtype())


def _scalar_array(name: str, values: list[Any], type_: pa.DataType) -> pa.Array:
    if pa.types.is_string(type_):
        for row, value in enumerate(values):
            if not isinstance(value, str):
                raise RowError(f"row {row}: column {name!r} must be a str; got {type(value).__name__}")
        return pa.array(values, type=type_)
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise RowError(f"column {name!r}: values are not scalars of type {type_}: {exc}") from exc
    if array.ndim != 1:
        raise RowError(f"column {name!r} must hold one scalar per row; got an array of shape {array.shape}")
    return pa.array(_cast(name, array, _numpy_dtype(type_), None), type=type_)


def _cast(name: str, array: np.ndarray, dtype: np.dtype, row: int | None) -> np.ndarray:
    """Cast to the column dtype, refusing integer overflow and float→int or int/float→bool truncation."""
    where = f"row {row}: " if row is not None else ""
    if array.dtype == dtype:
        return array
    if array.size == 0:
        return array.astype(dtype)
    if dtype.kind in "iu":
        if array.dtype.kind not in "iub":
            raise RowError(f"{where}column {name!r} needs integers ({dtype}); got {array.dtype}")
        info = np.iinfo(dtype)
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            raise RowError(
                f"{where}column {name!r}: values in [{low}, {high}] do not fit {dtype} "
                f"([{info.min}, {info.max}])"
            )
    elif dtype.kind == "b" and array.dtype.kind != "b":
        raise RowError(f"{where}column {name!r} needs booleans; got {array.dtype}")
    elif dtype.kind == "f" and array.dtype.kind not in "fiub":
        raise RowError(f"{where}column {name!r} needs floating-point values; got {array.dtype}")
    return array.astype(dtype)


def _offsets(name: str, lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > _INT32_MAX:
        raise RowError(
            f"column {name!r}: {offsets[-1]} list elements exceed the 2**31 - 1 that one list column of one "
            "table can hold; write fewer rows per shard"
        )
    return offsets.astype(np.int32)


def _list_array(name: str, values: list[Any], type_: pa.ListType) -> pa.Array:
    child = type_.value_type
    if pa.types.is_fixed_size_list(child):
        width = child.list_size
        dtype = _numpy_dtype(child.value_type)
        parts = []
        for row, value in enumerate(values):
            array = np.asarray(value)
            if array.ndim == 1 and array.size == 0:
                array = array.reshape(0, width)
            if array.ndim != 2 or array.shape[1] != width:
                raise RowError(
                    f"row {row}: column {name!r} needs a 2-D array of shape (n, {width}); "
                    f"got shape {array.shape}"
                )
            parts.append(_cast(name, array, dtype, row))
        lengths = np.fromiter((p.shape[0] for p in parts), dtype=np.int64, count=len(parts))
        flat = np.concatenate(parts).reshape(-1) if parts else np.zeros(0, dtype=dtype)
        inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=child.value_type), width)
    else:
        dtype = _numpy_dtype(child)
        parts = []
        for row, value in enumerate(values):
            array = np.asarray(value)
            if array.ndim != 1:
                raise RowError(f"row {row}: column {name!r} needs a 1-D array; got shape {array.shape}")
            parts.append(_cast(name, array, dtype, row))
        lengths = np.fromiter((p.shape[0] for p in parts), dtype=np.int64, count=len(parts))
        flat = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
        inner = pa.array(flat, type=child)
    offsets = pa.array(_offsets(name, lengths), type=pa.int32())
    return pa.ListArray.from_arrays(offsets, inner, type=type_)


def table_from_columns(columns: Mapping[str, Sequence[Any]], schema: pa.Schema) -> pa.Table:
    """Build a table from one sequence per column (one entry per row).

    Scalar columns take a sequence of Python or numpy scalars; ``list<x>`` columns take one 1-D array per
    row; ``list<fixed_size_list<x>[w]>`` columns take one 2-D array of shape (n_i, w) per row. Values are
    cast to the column type; integer overflow and float→int casts are refused.
    """
    missing = [name for name in schema.names if name not in columns]
    extra = [name for name in columns if name not in schema.names]
    if missing or extra:
        raise RowError(f"columns do not match the schema: missing {missing}, unexpected {extra}")
    counts = {name: len(columns[name]) for name in schema.names}
    if len(set(counts.values())) > 1:
        raise RowError(f"columns have different numbers of rows: {counts}")
    arrays = []
    for field in schema:
        values = list(columns[field.name])
        if pa.types.is_list(field.type):
            arrays.append(_list_array(field.name, values, field.type))
        else:
            arrays.append(_scalar_array(field.name, values, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def table_from_rows(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Build a table from rows, each a mapping from every column name of ``schema`` to its value.

    See :func:`table_from_columns` for the value each column type takes.
    """
    names = schema.names
    name_set = set(names)
    for row, mapping in enumerate(rows):
        keys = set(mapping)
        if keys != name_set:
            raise RowError(
                f"row {row}: keys do not match the schema: missing {sorted(name_set - keys)}, "
                f"unexpected {sorted(keys - name_set)}"
            )
    return table_from_columns({name: [mapping[name] for mapping in rows] for name in names}, schema)


def num_target_items(table: pa.Table) -> int:
    """Target items with teacher targets in a table: target positions (shared) or masked chunks (cross)."""
    if "target_positions" in table.schema.names:
        column = table.column("target_positions")
        return int(
            sum(int(np.sum(chunk.value_lengths().to_numpy(zero_copy_only=False))) for chunk in column.chunks)
        )
    if "chunk_masked" in table.schema.names:
        column = table.column("chunk_masked")
        return int(
            sum(
                int(np.count_nonzero(chunk.flatten().to_numpy(zero_copy_only=False)))
                for chunk in column.chunks
            )
        )
    raise SchemaError("table has neither 'target_positions' (shared) nor 'chunk_masked' (cross) columns")
