"""``manifest.json``: what a cache holds and how it was made (format v1).

The manifest is written last, after every shard is in place, so a directory with a manifest is a finished
cache. Loading checks the format name and version before anything else and refuses versions this library
does not know (:class:`UnknownFormatVersionError`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from cache_schema.errors import ManifestError, UnknownFormatVersionError
from cache_schema.schemas import PASSES, PIPELINE_SHARED, PIPELINES, VALUE_DTYPES, schema_for
from cache_schema.store import Store, is_url, open_store

FORMAT_NAME = "tide-cache"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS: tuple[int, ...] = (1,)
MANIFEST_FILE = "manifest.json"
# The folder of a cache's shards; a shard's manifest ``file`` is ``data/<name>``. Caches written before the
# folder existed list plain names, relative to the cache directory, and are still read.
DATA_DIR = "data"
REGIMES: tuple[str, ...] = ("paper", "native")
NOISE_GENERATOR = "splitmix64-v1"


# ---------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------


def _section(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a JSON object, naming missing and unknown keys."""
    if not isinstance(data, Mapping):
        raise ManifestError(f"manifest field {where!r} must be a JSON object; got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [n for n in required if n not in data]
    unknown = [n for n in data if n not in names]
    if missing:
        raise ManifestError(f"manifest field {where!r} lacks required keys {missing}")
    if unknown:
        raise ManifestError(f"manifest field {where!r} has unknown keys {unknown}; known keys are {names}")
    return cls(**dict(data))


def _require_int(value: Any, where: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ManifestError(f"manifest field {where!r} must be an integer; got {value!r}")
    if minimum is not None and value < minimum:
        raise ManifestError(f"manifest field {where!r} must be >= {minimum}; got {value}")
    return value


@dataclass
class TeacherInfo:
    """The teacher that produced the targets."""

    name: str
    revision: str | None
    weights_fingerprint: str | None
    model_type: str
    regime: str
    mask_token_id: int
    vocab_size: int
    shared_vocab_size: int | None = None

    def check(self) -> None:
        if self.regime not in REGIMES:
            raise ManifestError(
                f"manifest field 'teacher.regime' must be one of {list(REGIMES)}; got {self.regime!r}"
            )
        _require_int(self.vocab_size, "teacher.vocab_size", minimum=1)
        _require_int(self.mask_token_id, "teacher.mask_token_id", minimum=0)
        if self.shared_vocab_size is not None:
            _require_int(self.shared_vocab_size, "teacher.shared_vocab_size", minimum=1)


@dataclass
class StudentInfo:
    """The student side of the data: tokenizer, special ids and sequence layout."""

    tokenizer_fingerprint: str
    mask_token_id: int
    eos_token_id: int
    block_size: int
    max_length: int
    vocab_size: int

    def check(self) -> None:
        for name in ("mask_token_id", "eos_token_id"):
            _require_int(getattr(self, name), f"student.{name}", minimum=0)
        for name in ("block_size", "max_length", "vocab_size"):
            _require_int(getattr(self, name), f"student.{name}", minimum=1)


@dataclass
class TargetsInfo:
    """Which teacher passes are stored and at what precision; ``k`` only for pipeline ``shared``."""

    passes: list[str]
    value_dtype: str
    temperatures: list[float]
    k: int | None = None

    def check(self, pipeline: str) -> None:
        if not isinstance(self.passes, list) or not self.passes:
            raise ManifestError(
                f"manifest field 'targets.passes' must be a non-empty list; got {self.passes!r}"
            )
        for name in self.passes:
            if name not in PASSES:
                raise ManifestError(
                    f"manifest field 'targets.passes' holds {name!r}; known passes are {list(PASSES)}"
                )
        if len(set(self.passes)) != len(self.passes):
            raise ManifestError(f"manifest field 'targets.passes' lists a pass twice: {self.passes}")
        if self.value_dtype not in VALUE_DTYPES:
            raise ManifestError(
                f"manifest field 'targets.value_dtype' must be one of {list(VALUE_DTYPES)}; got {self.value_dtype!r}"
            )
        temps = self.temperatures
        if (
            not isinstance(temps, list)
            or not temps
            or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0
                for x in temps
            )
            or float(temps[0]) != 1.0
        ):
            raise ManifestError(
                f"manifest field 'targets.temperatures' must be a list of positive numbers starting with 1.0; "
                f"got {temps!r}"
            )
        if pipeline == PIPELINE_SHARED:
            _require_int(self.k, "targets.k", minimum=1)
        elif self.k is not None:
            raise ManifestError(
                f"manifest field 'targets.k' is only meaningful for pipeline 'shared'; got {self.k!r}"
            )


@dataclass
class NoiseInfo:
    """The counter-based noise that drew t, the masks and the CompDemo splits."""

    seed: int
    replicas: int
    eps: float
    schedule: str
    demo_ratio: float
    chunk_consistent: bool
    generator: str = NOISE_GENERATOR

    def check(self) -> None:
        _require_int(self.seed, "noise.seed", minimum=0)
        _require_int(self.replicas, "noise.replicas", minimum=1)
        for name, low, high in (("eps", 0.0, 1.0), ("demo_ratio", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ManifestError(
                    f"manifest field 'noise.{name}' must be a number in [{low}, {high}]; got {value!r}"
                )
        if self.schedule != "linear":
            raise ManifestError(f"manifest field 'noise.schedule' must be 'linear'; got {self.schedule!r}")
        if not isinstance(self.chunk_consistent, bool):
            raise ManifestError(
                f"manifest field 'noise.chunk_consistent' must be a boolean; got {self.chunk_consistent!r}"
            )


def is_shard_name(name: object) -> bool:
    """``data/<file name>`` or, in caches of the earlier layout, a plain ``<file name>`` (no hidden files)."""
    if not isinstance(name, str):
        return False
    leaf = name[len(DATA_DIR) + 1:] if name.startswith(DATA_DIR + "/") else name
    return bool(leaf) and "/" not in leaf and "\\" not in leaf and not leaf.startswith(".")


@dataclass
class ShardInfo:
    """One shard as listed in the manifest; returned by the writer after the shard is in place."""

    file: str
    rows: int
    bytes: int
    sha256: str
    num_targets: int

    def check(self, index: int) -> None:
        where = f"shards[{index}]"
        if not is_shard_name(self.file):
            raise ManifestError(f"manifest field '{where}.file' must be a file name under {DATA_DIR}/ (or a plain "
                                f"file name); got {self.file!r}")
        _require_int(self.rows, f"{where}.rows", minimum=0)
        _require_int(self.bytes, f"{where}.bytes", minimum=0)
        _require_int(self.num_targets, f"{where}.num_targets", minimum=0)
        if not isinstance(self.sha256, str) or len(self.sha256) != 64:
            raise ManifestError(f"manifest field '{where}.sha256' must be 64 hex digits; got {self.sha256!r}")


@dataclass
class Manifest:
    """The parsed ``manifest.json`` of a cache (format v1)."""

    pipeline: str
    teacher: TeacherInfo
    student: StudentInfo
    teacher_tokenizer_fingerprint: str
    targets: TargetsInfo
    noise: NoiseInfo
    build: dict[str, Any] = field(default_factory=dict)
    shards: list[ShardInfo] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    # --- derived -------------------------------------------------------------------------------------------

    @property
    def num_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def num_bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    @property
    def num_targets(self) -> int:
        return sum(s.num_targets for s in self.shards)

    def arrow_schema(self) -> pa.Schema:
        """The Arrow schema every shard of this cache must have."""
        return schema_for(
            self.pipeline,
            passes=self.targets.passes,
            k=self.targets.k,
            value_dtype=self.targets.value_dtype,
            num_temperatures=len(self.targets.temperatures),
        )

    # --- checks and (de)serialisation ------------------------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`ManifestError` naming the first field that breaks the format."""
        if self.format_version not in SUPPORTED_FORMAT_VERSIONS:
            raise UnknownFormatVersionError("manifest", self.format_version, SUPPORTED_FORMAT_VERSIONS)
        if self.pipeline not in PIPELINES:
            raise ManifestError(
                f"manifest field 'pipeline' must be one of {list(PIPELINES)}; got {self.pipeline!r}"
            )
        self.teacher.check()
        if self.pipeline == PIPELINE_SHARED and self.teacher.shared_vocab_size is None:
            raise ManifestError(
                "manifest field 'teacher.shared_vocab_size' is required for pipeline 'shared'"
            )
        self.student.check()
        self.targets.check(self.pipeline)
        self.noise.check()
        if not isinstance(self.build, dict):
            raise ManifestError(
                f"manifest field 'build' must be a JSON object; got {type(self.build).__name__}"
            )
        seen: set[str] = set()
        for index, shard in enumerate(self.shards):
            shard.check(index)
            if shard.file in seen:
                raise ManifestError(f"manifest lists shard {shard.file!r} twice")
            seen.add(shard.file)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "pipeline": self.pipeline,
            "teacher": dataclasses.asdict(self.teacher),
            "student": dataclasses.asdict(self.student),
            "teacher_tokenizer_fingerprint": self.teacher_tokenizer_fingerprint,
            "targets": dataclasses.asdict(self.targets),
            "noise": dataclasses.asdict(self.noise),
            "build": self.build,
            "shards": [dataclasses.asdict(s) for s in self.shards],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "manifest") -> Manifest:
        """Parse and check a manifest object; ``source`` names it in error messages."""
        if not isinstance(data, Mapping):
            raise ManifestError(f"{source}: the manifest must be a JSON object; got {type(data).__name__}")
        if data.get("format") != FORMAT_NAME:
            raise ManifestError(
                f"{source}: field 'format' must be {FORMAT_NAME!r}; got {data.get('format')!r}"
            )
        version = data.get("format_version")
        if version not in SUPPORTED_FORMAT_VERSIONS or isinstance(version, bool):
            raise UnknownFormatVersionError(source, version, SUPPORTED_FORMAT_VERSIONS)
        required = [
            "pipeline",
            "teacher",
            "student",
            "teacher_tokenizer_fingerprint",
            "targets",
            "noise",
            "shards",
        ]
        missing = [key for key in required if key not in data]
        if missing:
            raise ManifestError(f"{source}: manifest lacks required fields {missing}")
        known = set(required) | {"format", "format_version", "build"}
        unknown = [key for key in data if key not in known]
        if unknown:
            raise ManifestError(f"{source}: manifest has unknown fields {unknown}")
        if not isinstance(data["shards"], list):
            raise ManifestError(f"{source}: field 'shards' must be a list")
        try:
            manifest = cls(
                pipeline=data["pipeline"],
                teacher=_section(TeacherInfo, data["teacher"], "teacher"),
                student=_section(StudentInfo, data["student"], "student"),
                teacher_tokenizer_fingerprint=data["teacher_tokenizer_fingerprint"],
                targets=_section(TargetsInfo, data["targets"], "targets"),
                noise=_section(NoiseInfo, data["noise"], "noise"),
                build=data.get("build", {}),
                shards=[_section(ShardInfo, s, f"shards[{i}]") for i, s in enumerate(data["shards"])],
                format_version=version,
            )
            manifest.check()
        except ManifestError as exc:
            raise ManifestError(f"{source}: {exc}") from None
        return manifest

    def save(self, path: str | os.PathLike[str] | Store) -> str:
        """Check and write the manifest atomically; ``path`` is the cache directory (a path, URL or
        :class:`Store`) or the JSON file. Returns where it was written."""
        self.check()
        store, name = _manifest_location(path)
        try:
            text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        except (TypeError, ValueError) as exc:
            raise ManifestError(
                f"{store.display(name)}: manifest is not JSON-serialisable (check 'build'): {exc}"
            ) from exc
        store.write_bytes(name, text.encode("utf-8"))
        return store.display(name)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | Store) -> Manifest:
        """Read and check a manifest; ``path`` is the cache directory (a path, URL or :class:`Store`) or
        the JSON file."""
        store, name = _manifest_location(path)
        where = store.display(name)
        if not store.is_file(name):
            raise ManifestError(
                f"{where}: no manifest; a cache directory is only complete once its writer has written "
                f"{MANIFEST_FILE} (rebuild or resume the cache)"
            )
        try:
            data = json.loads(store.read_bytes(name).decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{where}: manifest is not readable JSON: {exc}") from exc
        return cls.from_dict(data, source=where)


def _manifest_location(path: str | os.PathLike[str] | Store) -> tuple[Store, str]:
    """(store of the directory, file name) for a cache directory or a manifest file: a local path names the
    file unless it is a directory; a URL names the file when it ends in ``.json``."""
    if isinstance(path, Store):
        return path, MANIFEST_FILE
    text = os.fspath(path)
    names_file = text.endswith(".json") if is_url(text) else not Path(text).is_dir()
    if not names_file:
        return open_store(text), MANIFEST_FILE
    if is_url(text):
        parent, _, name = text.rpartition("/")
        return open_store(parent), name
    return open_store(Path(text).parent), Path(text).name
