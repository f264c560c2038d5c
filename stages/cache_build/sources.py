"""Stage-one sources: source specs, and the readers that turn their rows into :class:`RawSample` s.

A source spec is one or more sources joined with ``+`` (e.g. ``"a.jsonl+b.parquet"``). Each source is

* a local file ending in ``.jsonl``, ``.json`` (a list of rows, or ``{"data": [...]}``) or ``.parquet``
  (a glob pattern reads every matching file in sorted order);
* anything else is a Hugging Face dataset, ``NAME[@CONFIG][:SPLIT]`` loaded with
  ``datasets.load_dataset(NAME, CONFIG, split=SPLIT)`` (split defaults to ``train`` and may use the
  datasets slicing syntax, e.g. ``allenai/tulu-3-sft-mixture:train[:1000]``); ``@*`` loads every
  configuration of the dataset (``datasets.get_dataset_config_names``, in that order) and concatenates them;

followed, optionally, by options in braces, ``SOURCE{key=value,...}`` (:class:`SourceOptions`):

* ``holdout=F`` holds a fraction F of the rows out with the semantics of ``datasets``'
  ``train_test_split(test_size=F, seed=S)``: a NumPy ``default_rng(S)`` permutation of the rows, the first
  ⌈F·n⌉ held out, the rest kept **in permutation order**; ``seed=S`` (default 42, the original's);
  ``part=heldout`` reads the held-out rows instead of the kept ones (an evaluation cache);
* ``lang=WORD`` keeps only rows in which some assistant message contains WORD (a literal, case-sensitive
  substring — the original's OpenCoder language filter), applied after the split.

The paper's mixture is :data:`PAPER_SOURCES`. Rows of several sources are interleaved in proportion to
their sizes (:func:`stages.cache_build.mixture.interleave`), so every stretch of the data — and hence
every cache shard — mixes the sources.

A row supplies its conversation in a ``messages`` column (a list of ``{"role", "content"}``, or that list
as a JSON string); rows with ``instruction`` and ``output`` strings instead become a user/assistant pair.
Each row's provenance id is ``"<source>:<row index>"`` with the row's index in the source as read (before
any split). Rows that cannot be read, rows the filter removes and held-out rows are counted in a
:class:`~stages.cache_build.skips.SkipCounter`; the messages themselves are validated later
(:func:`stages.cache_build.messages.normalize_messages`).
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.cache_build.mixture import has_language, holdout_split, interleave
from stages.cache_build.skips import (
    SKIP_BAD_ROW,
    SKIP_HELD_OUT,
    SKIP_INVALID_JSON,
    SKIP_LANGUAGE,
    SKIP_NO_MESSAGES,
    SKIP_UNDECODABLE,
    SkipCounter,
    SkipSample,
)

logger = logging.getLogger(__name__)

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
ALL_CONFIGS = "*"
PARTS = ("train", "heldout")

# The paper's training mixture (the original's README spec, with its held-out split and Python filter).
PAPER_SOURCES = (
    "allenai/tulu-3-sft-mixture{holdout=0.05}"
    "+HuggingFaceTB/smoltalk@all"
    "+OpenCoder-LLM/opc-sft-stage1@*{lang=python,holdout=0.05}"
    "+OpenCoder-LLM/opc-sft-stage2@*{lang=python,holdout=0.05}"
)


@dataclass(frozen=True)
class RawSample:
    """One unvalidated source row: provenance id and whatever the row held as messages."""

    sample_id: str
    messages: Any


@dataclass(frozen=True)
class SourceOptions:
    """The ``{...}`` options of one source (see the module docstring)."""

    lang: str | None = None
    holdout: float = 0.0
    seed: int = 42
    part: str = "train"

    @property
    def needs_rows_in_memory(self) -> bool:
        return self.lang is not None or self.holdout > 0


@dataclass(frozen=True)
class SourceSpec:
    """One parsed source: ``kind`` is ``local`` or ``hf``; ``spec`` is the text as given (the id prefix)."""

    spec: str
    kind: str
    name: str
    config: str | None = None
    split: str | None = None
    options: SourceOptions = field(default_factory=SourceOptions)


def split_sources(spec: str) -> list[str]:
    """The ``+``-separated parts of a source spec, stripped; empty parts are an error."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"source spec {spec!r}: expected one or more sources joined with '+'")
    parts = [part.strip() for part in spec.split("+")]
    if any(not part for part in parts):
        raise ValueError(f"source spec {spec!r}: empty source between '+' separators")
    return parts


def parse_options(spec: str, text: str) -> SourceOptions:
    """``key=value,...`` of a source's braces as :class:`SourceOptions`; ValueError names the bad entry."""
    values: dict[str, str] = {}
    for entry in (part.strip() for part in text.split(",")):
        key, sep, value = (s.strip() for s in entry.partition("="))
        if not sep or not key or not value:
            raise ValueError(f"source {spec!r}: option {entry!r} is not key=value")
        if key not in ("lang", "holdout", "seed", "part"):
            raise ValueError(f"source {spec!r}: unknown option {key!r} (known: lang, holdout, seed, part)")
        if key in values:
            raise ValueError(f"source {spec!r}: option {key!r} given twice")
        values[key] = value
    try:
        holdout = float(values.get("holdout", 0.0))
        seed = int(values.get("seed", 42))
    except ValueError as exc:
        raise ValueError(f"source {spec!r}: holdout must be a number and seed an integer ({exc})") from None
    options = SourceOptions(lang=values.get("lang"), holdout=holdout, seed=seed, part=values.get("part", "train"))
    if not 0.0 <= options.holdout < 1.0:
        raise ValueError(f"source {spec!r}: holdout={options.holdout} must lie in [0, 1)")
    if options.seed < 0:
        raise ValueError(f"source {spec!r}: seed={options.seed} must be non-negative")
    if options.part not in PARTS:
        raise ValueError(f"source {spec!r}: part={options.part!r} must be one of {PARTS}")
    if options.part == "heldout" and options.holdout == 0:
        raise ValueError(f"source {spec!r}: part=heldout needs a holdout fraction")
    return options


def parse_source(spec: str) -> SourceSpec:
    """Parse one source (no ``+``); see the module docstring for the syntax."""
    spec = spec.strip()
    if spec.startswith("builtin:"):
        raise ValueError(
            f"source {spec!r}: there are no built-in sources; write the conversations to a JSONL file "
            "(tide.testing.chat_data.write_chat_jsonl) and pass its path"
        )
    body, options = spec, SourceOptions()
    if spec.endswith("}"):
        opening = spec.rfind("{")
        if opening < 0:
            raise ValueError(f"source {spec!r}: '}}' without '{{'")
        body, options = spec[:opening].strip(), parse_options(spec, spec[opening + 1 : -1])
    if body.lower().endswith(LOCAL_SUFFIXES):
        return SourceSpec(spec=spec, kind="local", name=body, options=options)
    name, _, split = body.partition(":")
    name, _, config = name.partition("@")
    if not name:
        raise ValueError(f"source {spec!r}: missing dataset name")
    return SourceSpec(spec=spec, kind="hf", name=name, config=config or None, split=split or "train", options=options)


def _row_messages(row: Any) -> Any:
    if not isinstance(row, dict):
        raise SkipSample(SKIP_BAD_ROW, f"row is {type(row).__name__}, expected an object")
    if row.get("messages") is not None:
        return row["messages"]
    instruction, output = row.get("instruction"), row.get("output")
    if isinstance(instruction, str) and isinstance(output, str):
        return [{"role": "user", "content": instruction}, {"role": "assistant", "content": output}]
    raise SkipSample(SKIP_NO_MESSAGES, f"row has no 'messages' (keys {sorted(row)[:8]})")


# ------------------------------------------------------------------------------------------ local files


def _jsonl_rows(path: Path, name: str, skip_counter: SkipCounter) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as handle:
        for index, raw_line in enumerate(handle):
            if not raw_line.strip():
                continue
            try:
                yield index, json.loads(raw_line.decode("utf-8"))
            except UnicodeDecodeError:
                skip_counter.add(SKIP_UNDECODABLE, f"{name}:{index}", "line is not UTF-8")
            except json.JSONDecodeError as exc:
                skip_counter.add(SKIP_INVALID_JSON, f"{name}:{index}", str(exc))


def _json_rows(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a valid UTF-8 JSON document ({exc})") from exc
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of rows or an object with a 'data' list")
    return data


def _parquet_file(path: Path) -> Any:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(str(path))
    columns = set(parquet.schema_arrow.names)
    if "messages" not in columns and not {"instruction", "output"} <= columns:
        raise ValueError(f"{path}: no 'messages' column (columns: {sorted(columns)})")
    return parquet


def _parquet_rows(parquet: Any) -> Iterator[tuple[int, Any]]:
    index = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield index, row
            index += 1


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


class _LocalFile:
    """One local file: its row count (what interleaving weighs it by) and its (row index, row) pairs."""

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = path, name
        self.kind = path.suffix.lower()
        if self.kind == ".jsonl":
            with path.open("rb") as handle:  # a counting pass: a row is a line, blank lines included
                self.size = sum(1 for _ in handle)
        elif self.kind == ".json":
            self.size = len(_json_rows(path))
        else:
            self.size = _parquet_file(path).metadata.num_rows

    def rows(self, skip_counter: SkipCounter) -> Iterator[tuple[int, Any]]:
        if self.kind == ".jsonl":
            yield from _jsonl_rows(self.path, self.name, skip_counter)
        elif self.kind == ".json":
            yield from enumerate(_json_rows(self.path))
        else:
            yield from _parquet_rows(_parquet_file(self.path))


# ------------------------------------------------------------------------------------------ one source


class SourceRows:
    """The rows one source contributes: ``len`` (its size after its options) and :meth:`positions`.

    A Hugging Face dataset is read by index (memory-mapped, nothing loaded). A local file is streamed, or,
    when its options need the rows in memory (a held-out split permutes them, a filter selects), read
    once into a list.
    """

    def __init__(self, source: SourceSpec, skip_counter: SkipCounter) -> None:
        self.source, self.skip_counter = source, skip_counter
        self._files: list[_LocalFile] = []
        self._table: Sequence[Any] | None = None
        self._ids: list[str] | None = None  # None: a dataset's row i is "<spec>:i"
        self._order: list[int] | None = None  # table rows in reading order once options applied
        if source.kind == "hf":
            self._table = _load_hf(source)
        else:
            paths = _local_paths(source.name)
            self._files = [_LocalFile(p, str(p) if len(paths) > 1 else source.spec) for p in paths]
            if source.options.needs_rows_in_memory:
                pairs = [(f"{local.name}:{index}", row) for local in self._files
                         for index, row in local.rows(skip_counter)]
                self._ids, self._table = [i for i, _ in pairs], [row for _, row in pairs]
        if source.options.needs_rows_in_memory:
            self._order = self._apply_options()

    def __len__(self) -> int:
        if self._order is not None:
            return len(self._order)
        if self._table is not None:
            return len(self._table)
        return sum(local.size for local in self._files)

    def _row_id(self, index: int) -> str:
        return self._ids[index] if self._ids is not None else f"{self.source.spec}:{index}"

    def _apply_options(self) -> list[int]:
        """The table rows kept by the held-out split (in its permutation order), then by the filter."""
        assert self._table is not None
        options = self.source.options
        order = list(range(len(self._table)))
        if options.holdout > 0:
            kept, held = holdout_split(len(order), options.holdout, options.seed)
            chosen, other = (kept, held) if options.part == "train" else (held, kept)
            for index in other:
                self.skip_counter.add(SKIP_HELD_OUT, self._row_id(int(index)))
            order = [int(index) for index in chosen]
        if options.lang is not None:
            passing = []
            for index in order:
                try:
                    keep = has_language(_row_messages(self._table[index]), options.lang)
                except SkipSample:
                    keep = True  # an unreadable row is counted under its own reason when it is read
                if keep:
                    passing.append(index)
                else:
                    self.skip_counter.add(SKIP_LANGUAGE, self._row_id(index))
            order = passing
        logger.info("source %s: %d of %d rows kept", self.source.spec, len(order), len(self._table))
        return order

    def _rows(self) -> Iterator[tuple[int, str, Any]]:
        """(position, sample id, row) in reading order; positions lie in [0, len)."""
        if self._table is not None:
            indices = self._order if self._order is not None else range(len(self._table))
            for position, index in enumerate(indices):
                yield position, self._row_id(index), self._table[index]
            return
        offset = 0
        for local in self._files:
            for index, row in local.rows(self.skip_counter):
                yield offset + index, f"{local.name}:{index}", row
            offset += local.size

    def positions(self) -> Iterator[tuple[int, RawSample]]:
        """(position, :class:`RawSample`) in reading order; rows without messages are counted and skipped."""
        for position, sample_id, row in self._rows():
            try:
                yield position, RawSample(sample_id, _row_messages(row))
            except SkipSample as skip:
                self.skip_counter.add(skip.reason, sample_id, skip.detail)


def _load_hf(source: SourceSpec) -> Sequence[Any]:
    import datasets

    if source.config != ALL_CONFIGS:
        return datasets.load_dataset(source.name, source.config, split=source.split)
    configs = list(datasets.get_dataset_config_names(source.name))
    if not configs:
        raise ValueError(f"source {source.spec!r}: the dataset has no configurations to load with '@*'")
    parts = [datasets.load_dataset(source.name, config, split=source.split) for config in configs]
    logger.info("source %s: configurations %s", source.spec, configs)
    if all(isinstance(part, datasets.Dataset) for part in parts):
        return datasets.concatenate_datasets(parts)
    return [row for part in parts for row in part]


def iter_source(spec: str, skip_counter: SkipCounter | None = None) -> Iterator[RawSample]:
    """Rows of one source (no ``+``) as :class:`RawSample`; unreadable rows are counted and skipped."""
    skip_counter = SkipCounter() if skip_counter is None else skip_counter
    for _, sample in SourceRows(parse_source(spec), skip_counter).positions():
        yield sample


def iter_sources(spec: str, skip_counter: SkipCounter | None = None, *, mix: bool = True) -> Iterator[RawSample]:
    """Rows of every ``+``-joined source: interleaved in proportion to the sources' sizes (``mix``), or
    source after source."""
    skip_counter = SkipCounter() if skip_counter is None else skip_counter
    parts = split_sources(spec)
    if not mix or len(parts) == 1:
        for part in parts:
            yield from iter_source(part, skip_counter)
        return
    sources = [SourceRows(parse_source(part), skip_counter) for part in parts]
    yield from interleave([(len(s), s.positions()) for s in sources])
