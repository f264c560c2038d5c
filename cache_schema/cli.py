"""``inspect`` and ``validate``: the format's command-line tools (no torch, no model code); ``push``, ``pull``
and ``relayout`` come from :mod:`cache_schema.transfer_cli`. Every command takes a path or a URL.

``register_commands(subparsers)`` adds them to a parent parser (the ``tide-cache`` command); ``main`` runs
them standalone: ``python -m cache_schema.cli validate PATH``. ``validate`` lists every problem it finds,
one line each; a cache ``inspect`` cannot read ends in one line naming the file at fault; an error escaping
either is one line too (``--debug``: the traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cache_schema.codec import codec_for
from cache_schema.errors import CacheError
from cache_schema.exact_inspect import exact_columns, exact_item_line, exact_summary
from cache_schema.manifest import Manifest, ShardInfo
from cache_schema.schemas import PIPELINE_SHARED, chunk_logprob_column, pass_columns
from cache_schema.store import Store, open_store
from cache_schema.transfer_cli import register_transfer_commands
from cache_schema.validate import validate_cache

_TOP_SHOWN = 5  # top-k entries printed per decoded target
_ITEMS_SHOWN = 3  # target items printed per decoded row
# The chunk losses' probability clamp and default temperature (tide.losses.calm: CALM_CLAMP and
# DEFAULT_CHUNK_TEMPERATURE; cache_schema imports no model code, a test keeps the two equal).
CALM_CLAMP = 1e-7
CALM_TEMPERATURE = 5.0


def register_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``inspect``, ``validate``, ``push``, ``pull`` and ``relayout`` to ``subparsers``; each sets ``func`` (called as ``args.func(args)``)."""
    inspect = subparsers.add_parser(
        "inspect", help="summarise a cache: manifest, sizes per shard, a few decoded rows"
    )
    inspect.add_argument("path", help="cache directory or URL (s3://, gs://, hf://, file://; holds manifest.json)")
    inspect.add_argument("--rows", type=int, default=0, metavar="N", help="decode and print the first N rows")
    inspect.add_argument("--calm-temperature", type=float, action="append", metavar="T",
                         help=f"chunk caches: count the active chunks whose probability exp(log-p / T) the CALM "
                              f"clamp [{CALM_CLAMP}, 1 - {CALM_CLAMP}] changes, at T (repeatable; default "
                              f"{CALM_TEMPERATURE})")
    inspect.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    inspect.set_defaults(func=run_inspect)

    validate = subparsers.add_parser(
        "validate", help="check checksums, row counts, schema and content invariants; exit 1 on any problem"
    )
    validate.add_argument("path", help="cache directory or URL (s3://, gs://, hf://, file://; holds manifest.json)")
    validate.add_argument("--no-checksums", action="store_true", help="skip SHA-256 verification")
    validate.add_argument("--no-content", action="store_true", help="skip the per-row content invariants")
    validate.add_argument(
        "--max-rows", type=int, default=5, metavar="N", help="rows reported per failing check (default 5)"
    )
    validate.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    validate.set_defaults(func=run_validate)
    register_transfer_commands(subparsers)


# ---------------------------------------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------------------------------------


def run_validate(args: argparse.Namespace) -> int:
    problems = validate_cache(
        args.path,
        verify_checksums=not args.no_checksums,
        check_content=not args.no_content,
        max_rows_per_check=args.max_rows,
    )
    if problems:
        for problem in problems:  # one line each, whatever line breaks a decoder's message held
            print("; ".join(part.strip() for part in str(problem).splitlines() if part.strip()))
        print(f"{len(problems)} problem(s) in {args.path}", file=sys.stderr)
        return 1
    manifest = Manifest.load(args.path)
    print(f"OK: {args.path} ({manifest.num_rows} rows in {len(manifest.shards)} shards)")
    return 0


# ---------------------------------------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------------------------------------


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _per(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.1f}" if denominator else "-"


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    for line in (header, *rows):
        print(
            "  ".join(
                str(cell).rjust(width) if i else str(cell).ljust(width)
                for i, (cell, width) in enumerate(zip(line, widths, strict=True))
            )
        )


def _print_manifest(manifest: Manifest, path: str) -> None:
    teacher, student, targets, noise = manifest.teacher, manifest.student, manifest.targets, manifest.noise
    print(f"cache      {path}")
    print(f"format     tide-cache v{manifest.format_version}, pipeline {manifest.pipeline!r}")
    print(
        f"teacher    {teacher.name} @ {teacher.revision} ({teacher.model_type}, regime {teacher.regime}, "
        f"vocab {teacher.vocab_size}, shared {teacher.shared_vocab_size}, mask {teacher.mask_token_id})"
    )
    print(
        f"student    vocab {student.vocab_size}, block {student.block_size}, max length {student.max_length}, "
        f"mask {student.mask_token_id}, eos {student.eos_token_id}"
    )
    if targets.sparse is not None:
        policy, encoding = targets.sparse.k_policy, targets.sparse.encoding
        k = (f"k {policy.ceiling} (fixed)" if policy.kind == "fixed" else
             f"k {policy.floor}..{policy.ceiling} reaching mass {policy.mass} at T={policy.temperature}")
        table = f", id table {len(encoding.id_table)} ids, value step {encoding.value_step}" if encoding.id_table is not None else ""
        print(f"targets    passes {targets.passes}, temperatures {targets.temperatures}, {k}, "
              f"encoding {encoding.name}{table}")
    else:
        k = f"k={targets.k}, " if targets.k is not None else ""
        values = f"values {targets.value_dtype}, " if targets.value_dtype is not None else ""
        print(f"targets    passes {targets.passes}, {k}{values}temperatures {targets.temperatures}")
    print(
        f"noise      seed {noise.seed}, {noise.replicas} replicas, eps {noise.eps}, {noise.schedule}, "
        f"demo ratio {noise.demo_ratio}, chunk consistent {noise.chunk_consistent}, {noise.generator}"
    )


def _parquet(store: Store, entry: ShardInfo) -> pq.ParquetFile:
    """A listed shard opened for reading, wherever the cache lives."""
    return pq.ParquetFile(store.open_input(entry.file, size=entry.bytes))


def _shard_rows(manifest: Manifest, store: Store) -> tuple[list[list[str]], int]:
    rows: list[list[str]] = []
    masked_total = 0
    for entry in manifest.shards:
        masked = "missing"
        if store.is_file(entry.file):
            try:
                lengths = _parquet(store, entry).read(columns=["masked_positions"]).column(0)
                count = int(
                    sum(
                        int(chunk.value_lengths().to_numpy(zero_copy_only=False).sum())
                        for chunk in lengths.chunks
                    )
                )
                masked_total += count
                masked = str(count)
            except Exception as exc:  # a damaged shard still gets its row in the table
                masked = f"unreadable ({type(exc).__name__})"
        rows.append(
            [
                entry.file,
                str(entry.rows),
                _human(entry.bytes),
                str(entry.num_targets),
                masked,
                _per(entry.bytes, entry.num_targets),
            ]
        )
    return rows, masked_total


def _pass_bytes(manifest: Manifest, store: Store) -> dict[str, int]:
    """Compressed bytes of each teacher pass's target columns over all shards (Parquet footers only)."""
    owner = {column: name for name in manifest.targets.passes
             for column in pass_columns(manifest.pipeline, name, format_version=manifest.format_version,
                                        **({"encoding": manifest.targets.sparse.encoding.name}
                                           if manifest.targets.sparse is not None else {}))}
    owner.update(exact_columns(manifest))
    totals = dict.fromkeys(manifest.targets.passes, 0)
    for entry in manifest.shards:
        meta = _parquet(store, entry).metadata
        for group in range(meta.num_row_groups):
            for index in range(meta.num_columns):
                column = meta.row_group(group).column(index)
                name = owner.get(column.path_in_schema.split(".")[0])
                if name is not None:
                    totals[name] += int(column.total_compressed_size)
    return totals


def _fmt(value: float) -> str:
    return "nan" if np.isnan(value) else f"{value:.3f}"


def _decode_shared(row: dict, manifest: Manifest) -> list[str]:
    lines = []
    positions = row["target_positions"]
    input_ids = row["input_ids"]
    sparse = manifest.format_version == 1 or manifest.targets.sparse is not None
    codec = codec_for(manifest) if sparse else None
    decoded = {}
    for pass_name in manifest.targets.passes if sparse else ():
        columns = {name: np.asarray(_flat(row[name])) for name in codec.columns(pass_name)}
        decoded[pass_name] = codec.decode(columns, pass_name)
    for item in range(min(_ITEMS_SHOWN, len(positions))):
        position = int(positions[item])
        lines.append(
            f"    target {item}: student position {position}, gold id {int(input_ids[position])}, "
            f"teacher position {int(row['target_teacher_positions'][item])}"
        )
        for pass_name, targets in decoded.items():
            start, count = int(targets.starts[item]), int(targets.counts[item])
            ids = targets.ids[start:start + count]
            values = targets.values[start:start + count].astype(np.float64)
            tail = float(np.exp(targets.log_tails[item, 0]))
            probs = (1.0 - tail) * np.exp(values - np.log(np.exp(values - values.max()).sum()) - values.max())
            shown = ", ".join(
                f"{int(i)}:{p:.3f}" for i, p in zip(ids[:_TOP_SHOWN], probs[:_TOP_SHOWN], strict=True)
            )
            lines.append(
                f"      {pass_name:8s} k={count} top ids:p [{shown}], tail mass {tail:.3g}, "
                f"gold log-p {_fmt(float(targets.gold_logprob[item]))}"
            )
        if manifest.targets.exact is not None:
            lines += [exact_item_line(row, manifest, pass_name, item) for pass_name in manifest.targets.passes]
    return lines


def _flat(value: object) -> list:
    """A row's list value with nested lists (fixed-width items) flattened."""
    items = list(value)
    return [x for item in items for x in item] if items and isinstance(items[0], (list, tuple)) else items


def _decode_cross(row: dict, manifest: Manifest) -> list[str]:
    lines = []
    masked = np.flatnonzero(np.asarray(row["chunk_masked"], dtype=bool))
    for item in masked[:_ITEMS_SHOWN].tolist():
        spans = (
            f"student [{row['chunk_student_start'][item]}, {row['chunk_student_end'][item]}), "
            f"teacher [{row['chunk_teacher_start'][item]}, {row['chunk_teacher_end'][item]})"
        )
        logps = ", ".join(
            f"{p} log-p {_fmt(float(row[chunk_logprob_column(p)][item]))}" for p in manifest.targets.passes
        )
        lines.append(f"    masked chunk {item}: {spans}, {logps}")
    return lines


def clamped_chunk_counts(manifest: Manifest, store: Store, temperature: float) -> dict[str, tuple[int, int, int]]:
    """Per pass: (active chunks, chunks whose fp32 probability exp(ℓ/T) lies above 1 − clamp, below clamp).

    Active = masked and not in a prompt (what the chunk losses read). The bounds are fp32 values, as the
    clamp is applied to fp32 probabilities: 1 − 1e−7 rounds to 1 − 2^−23 there."""
    high, low = np.float32(1 - CALM_CLAMP), np.float32(CALM_CLAMP)
    counts = {name: [0, 0, 0] for name in manifest.targets.passes}
    columns = ["chunk_masked", "chunk_in_prompt", *(chunk_logprob_column(p) for p in manifest.targets.passes)]
    for entry in manifest.shards:
        table = _parquet(store, entry).read(columns=columns)
        active = (table.column("chunk_masked").combine_chunks().flatten().to_numpy(zero_copy_only=False)
                  & ~table.column("chunk_in_prompt").combine_chunks().flatten().to_numpy(zero_copy_only=False))
        for name in manifest.targets.passes:
            logprob = table.column(chunk_logprob_column(name)).combine_chunks().flatten().to_numpy()[active]
            scaled = logprob.astype(np.float32) / np.float32(temperature)  # ℓ/T in fp32, as the loss divides
            probability = np.exp(scaled.astype(np.float64)).astype(np.float32)  # correctly rounded fp32 exp
            counts[name][0] += int(active.sum())
            counts[name][1] += int((probability > high).sum())
            counts[name][2] += int((probability < low).sum())
    return {name: (a, h, lo) for name, (a, h, lo) in counts.items()}


def _print_clamped(manifest: Manifest, store: Store, temperatures: Sequence[float]) -> None:
    for temperature in temperatures:
        for name, (active, high, low) in clamped_chunk_counts(manifest, store, temperature).items():
            share = f"{100 * (high + low) / active:.2f}%" if active else "-"
            print(f"clamped    {name} at T={temperature:g}: {high + low} of {active} active chunks ({share}) in the "
                  f"CALM clamp: {high} above 1 - {CALM_CLAMP:g}, {low} below {CALM_CLAMP:g}")


def _read_group(store: Store, entry: ShardInfo, group: int | None = None) -> pq.ParquetFile | pa.Table:
    """A listed shard's Parquet file (``group`` None) or one of its row groups, wherever the cache lives; a
    damaged file raises a :class:`CacheError` naming it."""
    try:
        parquet = _parquet(store, entry)
        return parquet if group is None else parquet.read_row_group(group)
    except (OSError, ValueError) as exc:  # pyarrow's errors for damaged files derive from these
        where = f"row group {group} of {entry.file}" if group is not None else entry.file
        raise CacheError(f"{where}: cannot be decoded ({type(exc).__name__}: {' '.join(str(exc).split())})") from exc


def _print_rows(manifest: Manifest, store: Store, count: int) -> None:
    shown = 0
    for entry in manifest.shards:
        if shown >= count:
            break
        parquet = _read_group(store, entry)
        for group in range(parquet.metadata.num_row_groups):
            if shown >= count:
                break
            table = _read_group(store, entry, group).slice(0, count - shown)
            for row in table.to_pylist():
                masked = len(row["masked_positions"])
                items = len(
                    row["target_positions"] if manifest.pipeline == PIPELINE_SHARED else row["chunk_masked"]
                )
                print(
                    f"[{entry.file} row {shown}] {row['sample_id']} replica {row['replica']} t={row['t']:.4f} "
                    f"L={len(row['input_ids'])} maskable={sum(row['maskable'])} masked={masked} "
                    f"teacher L={len(row['teacher_input_ids'])} items={items}"
                )
                decode = _decode_shared if manifest.pipeline == PIPELINE_SHARED else _decode_cross
                try:
                    lines = decode(row, manifest)
                except (TypeError, ValueError, CacheError) as exc:  # damaged pages may decode to nulls
                    raise ValueError(f"{entry.file} row group {group}: {type(exc).__name__}: {exc}") from None
                for line in lines:
                    print(line)
                shown += 1


def run_inspect(args: argparse.Namespace) -> int:
    try:
        store = open_store(args.path)
        manifest = Manifest.load(store)
    except CacheError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _print_manifest(manifest, args.path)
    shard_rows, masked_total = _shard_rows(manifest, store)
    total_bytes, total_targets = manifest.num_bytes, manifest.num_targets
    print(
        f"size       {manifest.num_rows} rows, {len(manifest.shards)} shards, {_human(total_bytes)}, "
        f"{total_targets} target items, {masked_total} masked positions"
    )
    print(
        f"bytes      {_per(total_bytes, total_targets)} per target item, "
        f"{_per(total_bytes, masked_total)} per masked position, {_per(total_bytes, manifest.num_rows)} per row"
    )
    try:
        for name, size in _pass_bytes(manifest, store).items():
            print(f"  pass {name:9s} {_per(size, total_targets)} bytes per target item, "
                  f"{_per(size, masked_total)} per masked position (its target columns)")
        for line in exact_summary(manifest, store):
            print(line)
    except Exception as exc:  # a damaged shard: the table below still lists every shard
        print(f"  pass bytes unreadable ({type(exc).__name__}); run `validate` for details")
    if manifest.pipeline != PIPELINE_SHARED:
        try:
            _print_clamped(manifest, store, args.calm_temperature or [CALM_TEMPERATURE])
        except (OSError, ValueError) as exc:
            print(f"error: cannot count clamped chunks ({exc}); run `validate` for details", file=sys.stderr)
            return 1
    print()
    _print_table(["shard", "rows", "size", "targets", "masked", "bytes/target"], shard_rows)
    if args.rows > 0:
        print()
        try:
            _print_rows(manifest, store, args.rows)
        except (OSError, CacheError, ValueError) as exc:
            print(f"error: cannot decode rows ({exc}); run `validate` for details", file=sys.stderr)
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point: ``python -m cache_schema.cli {inspect,validate} PATH``; a cache error is one
    line on stderr (exit 1) unless ``--debug``."""
    parser = argparse.ArgumentParser(prog="python -m cache_schema.cli", description=__doc__.splitlines()[0])
    register_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CacheError, OSError, ValueError) as exc:
        if args.debug:
            raise
        print(f"{parser.prog} {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
