"""Stage-one sources: source specs, and the readers that turn their rows into :class:`RawSample` s.

A source spec is one or more sources joined with ``+`` (e.g. ``"a.jsonl+b.parquet"``); rows are read
source after source. Each source is one of:

* a local file ending in ``.jsonl``, ``.json`` (a list of rows, or ``{"data": [...]}``) or ``.parquet``
  (a glob pattern reads every matching file in sorted order);
* anything else is a Hugging Face dataset, ``NAME[@CONFIG][:SPLIT]`` loaded with
  ``datasets.load_dataset(NAME, CONFIG, split=SPLIT)`` (split defaults to ``train`` and may use the
  datasets slicing syntax, e.g. ``allenai/tulu-3-sft-mixture:train[:1000]``).

A row supplies its conversation in a ``messages`` column (a list of ``{"role", "content"}``, or that list
as a JSON string); rows with ``instruction`` and ``output`` strings instead become a user/assistant pair.
Each row's provenance id is ``"<source spec>:<row index>"``. Rows that cannot be read are skipped and
counted in a :class:`~stages.cache_build.skips.SkipCounter`; the messages themselves are validated later
(:func:`stages.cache_build.messages.normalize_messages`).
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.cache_build.skips import (
    SKIP_BAD_ROW,
    SKIP_INVALID_JSON,
    SKIP_NO_MESSAGES,
    SKIP_UNDECODABLE,
    SkipCounter,
    SkipSample,
)

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class RawSample:
    """One unvalidated source row: provenance id and whatever the row held as messages."""

    sample_id: str
    messages: Any


@dataclass(frozen=True)
class SourceSpec:
    """One parsed source: ``kind`` is ``local`` or ``hf``."""

    spec: str
    kind: str
    name: str
    config: str | None = None
    split: str | None = None


def split_sources(spec: str) -> list[str]:
    """The ``+``-separated parts of a source spec, stripped; empty parts are an error."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"source spec {spec!r}: expected one or more sources joined with '+'")
    parts = [part.strip() for part in spec.split("+")]
    if any(not part for part in parts):
        raise ValueError(f"source spec {spec!r}: empty source between '+' separators")
    return parts


def parse_source(spec: str) -> SourceSpec:
    """Parse one source (no ``+``); see the module docstring for the syntax."""
    spec = spec.strip()
    if spec.startswith("builtin:"):
        raise ValueError(
            f"source {spec!r}: there are no built-in sources; write the conversations to a JSONL file "
            "(tide.testing.chat_data.write_chat_jsonl) and pass its path"
        )
    if spec.lower().endswith(LOCAL_SUFFIXES):
        return SourceSpec(spec=spec, kind="local", name=spec)
    name, _, split = spec.partition(":")
    name, _, config = name.partition("@")
    if not name:
        raise ValueError(f"source {spec!r}: missing dataset name")
    return SourceSpec(spec=spec, kind="hf", name=name, config=config or None, split=split or "train")


def _row_messages(row: Any) -> Any:
    if not isinstance(row, dict):
        raise SkipSample(SKIP_BAD_ROW, f"row is {type(row).__name__}, expected an object")
    if row.get("messages") is not None:
        return row["messages"]
    instruction, output = row.get("instruction"), row.get("output")
    if isinstance(instruction, str) and isinstance(output, str):
        return [{"role": "user", "content": instruction}, {"role": "assistant", "content": output}]
    raise SkipSample(SKIP_NO_MESSAGES, f"row has no 'messages' (keys {sorted(row)[:8]})")


def _rows_to_samples(spec: str, rows: Iterable[Any], skip_counter: SkipCounter) -> Iterator[RawSample]:
    for index, row in enumerate(rows):
        sample_id = f"{spec}:{index}"
        try:
            yield RawSample(sample_id, _row_messages(row))
        except SkipSample as skip:
            skip_counter.add(skip.reason, sample_id, skip.detail)


def _iter_jsonl(path: Path, spec: str, skip_counter: SkipCounter) -> Iterator[RawSample]:
    with path.open("rb") as handle:
        for index, raw_line in enumerate(handle):
            sample_id = f"{spec}:{index}"
            if not raw_line.strip():
                continue
            try:
                row = json.loads(raw_line.decode("utf-8"))
            except UnicodeDecodeError:
                skip_counter.add(SKIP_UNDECODABLE, sample_id, "line is not UTF-8")
                continue
            except json.JSONDecodeError as exc:
                skip_counter.add(SKIP_INVALID_JSON, sample_id, str(exc))
                continue
            try:
                yield RawSample(sample_id, _row_messages(row))
            except SkipSample as skip:
                skip_counter.add(skip.reason, sample_id, skip.detail)


def _iter_json(path: Path, spec: str, skip_counter: SkipCounter) -> Iterator[RawSample]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a valid UTF-8 JSON document ({exc})") from exc
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of rows or an object with a 'data' list")
    yield from _rows_to_samples(spec, data, skip_counter)


def _iter_parquet(path: Path, spec: str, skip_counter: SkipCounter) -> Iterator[RawSample]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(str(path))
    columns = set(parquet.schema_arrow.names)
    if "messages" not in columns and not {"instruction", "output"} <= columns:
        raise ValueError(f"{path}: no 'messages' column (columns: {sorted(columns)})")

    def rows() -> Iterator[Any]:
        for batch in parquet.iter_batches(batch_size=1024):
            yield from batch.to_pylist()

    yield from _rows_to_samples(spec, rows(), skip_counter)


def _local_paths(spec: str) -> list[Path]:
    if any(char in spec for char in "*?["):
        paths = sorted(Path(p) for p in glob.glob(spec))
        if not paths:
            raise FileNotFoundError(f"source {spec!r}: the pattern matches no file")
        return paths
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"source {spec!r}: no such file")
    return [path]


def iter_source(spec: str, skip_counter: SkipCounter | None = None) -> Iterator[RawSample]:
    """Rows of one source (no ``+``) as :class:`RawSample`; unreadable rows are counted and skipped."""
    skip_counter = SkipCounter() if skip_counter is None else skip_counter
    source = parse_source(spec)
    if source.kind == "local":
        paths = _local_paths(source.spec)
        for path in paths:
            name = str(path) if len(paths) > 1 else source.spec
            suffix = path.suffix.lower()
            if suffix == ".jsonl":
                yield from _iter_jsonl(path, name, skip_counter)
            elif suffix == ".json":
                yield from _iter_json(path, name, skip_counter)
            else:
                yield from _iter_parquet(path, name, skip_counter)
        return
    import datasets

    dataset = datasets.load_dataset(source.name, source.config, split=source.split)
    yield from _rows_to_samples(source.spec, dataset, skip_counter)


def iter_sources(spec: str, skip_counter: SkipCounter | None = None) -> Iterator[RawSample]:
    """Rows of every ``+``-joined source in order."""
    skip_counter = SkipCounter() if skip_counter is None else skip_counter
    for part in split_sources(spec):
        yield from iter_source(part, skip_counter)
