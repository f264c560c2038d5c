"""What ``tide-cache inspect`` shows of a cache's exact targets: the encoding, the bytes of the hidden-state
columns (Parquet footers only) against full logits, the LM-head file, and a decoded item."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from cache_schema.exact_targets import HiddenCodec, bytes_per_item, hidden_column, hidden_scale_column
from cache_schema.manifest import Manifest
from cache_schema.store import Store

FULL_LOGIT_BYTES = 2  # a bf16 logit per shared-vocabulary id: what storing the full distribution would take


def exact_columns(manifest: Manifest) -> dict[str, str]:
    """Column → pass of the exact-target columns (empty without exact targets)."""
    exact = manifest.targets.exact
    if exact is None:
        return {}
    codec = exact.codec()
    return {column: name for name in manifest.targets.passes for column in codec.columns(name)}


def exact_column_bytes(manifest: Manifest, store: Store) -> int:
    """Compressed bytes of every exact-target column over all shards."""
    owned = exact_columns(manifest)
    total = 0
    for entry in manifest.shards:
        meta = pq.ParquetFile(store.open_input(entry.file, size=entry.bytes)).metadata
        for group in range(meta.num_row_groups):
            for index in range(meta.num_columns):
                column = meta.row_group(group).column(index)
                if column.path_in_schema.split(".")[0] in owned:
                    total += int(column.total_compressed_size)
    return total


def exact_summary(manifest: Manifest, store: Store) -> list[str]:
    """Lines describing the exact targets and their bytes (empty without exact targets)."""
    exact = manifest.targets.exact
    if exact is None:
        return []
    codec = exact.codec()
    items = manifest.num_targets * len(manifest.targets.passes)
    stored = exact_column_bytes(manifest, store)
    per_item = stored / items if items else float("nan")
    full = FULL_LOGIT_BYTES * int(manifest.teacher.shared_vocab_size)
    head_bytes = store.size(exact.head_file)
    head_size = f"{head_bytes} bytes" if head_bytes is not None else "MISSING"
    return [
        f"exact      hidden states {exact.hidden_encoding} × {exact.hidden_size} per target item and pass "
        f"({bytes_per_item(codec)} bytes raw), head file {exact.head_file} ({exact.head_dtype}, {head_size}, "
        f"sha256 {exact.head_sha256[:12]}…)",
        f"  exact    {per_item:.1f} bytes per target item and pass stored, vs {full} for bf16 full logits "
        f"({full / per_item:.1f}× smaller)" if items else "  exact    no target items",
    ]


def exact_item_line(row: dict, manifest: Manifest, pass_name: str, item: int) -> str:
    """One decoded item: the norm and extreme values of its stored hidden state (and the int8 scale)."""
    codec: HiddenCodec = manifest.targets.exact.codec()
    columns = {hidden_column(pass_name): np.asarray(row[hidden_column(pass_name)], dtype=np.int32)}
    if codec.has_scale:
        columns[hidden_scale_column(pass_name)] = np.asarray(row[hidden_scale_column(pass_name)], dtype=np.float32)
    hidden = codec.decode(columns, pass_name)
    values = hidden.values()[item].astype(np.float64)
    scale = "" if hidden.scale is None else f", scale {float(hidden.scale[item]):.4g}"
    return (f"      {pass_name:8s} hidden |h| {np.linalg.norm(values):.4g}, range [{values.min():.4g}, "
            f"{values.max():.4g}]{scale}")
