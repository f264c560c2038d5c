"""``manifest.json``: what a cache holds and how it was made (format v2; v1 is still read).

The manifest is written last, after every shard is in place, so a directory with a manifest is a finished
cache. Loading checks the format name and version before anything else and refuses versions this library
does not know (:class:`UnknownFormatVersionError`). Version 2 describes a ``shared`` cache's sparse targets
in ``targets.sparse`` (the k policy and the encoding with its id table); version 1 had a fixed ``k`` and a
``value_dtype`` instead.
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
from cache_schema.exact_targets import ExactInfo, with_exact_columns
from cache_schema.schemas import (
    ENCODING_PACKED,
    PASSES,
    PIPELINE_SHARED,
    PIPELINES,
    SPARSE_ENCODINGS,
    VALUE_DTYPES,
    schema_for,
    shared_schema_v1,
)
from cache_schema.store import Store, is_url, open_store

FORMAT_NAME = "tide-cache"
FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS: tuple[int, ...] = (1, 2)
K_POLICY_KINDS: tuple[str, ...] = ("fixed", "mass")
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
class KPolicyInfo:
    """How many top entries each target item keeps (format v2): ``fixed`` keeps ``ceiling``; ``mass`` keeps the
    smallest k whose teacher probability at ``temperature`` reaches ``mass``, within [``floor``, ``ceiling``]."""

    kind: str
    ceiling: int
    mass: float | None = None
    temperature: float | None = None
    floor: int | None = None

    def check(self) -> None:
        if self.kind not in K_POLICY_KINDS:
            raise ManifestError(f"manifest field 'targets.sparse.k_policy.kind' must be one of {list(K_POLICY_KINDS)}; "
                                f"got {self.kind!r}")
        _require_int(self.ceiling, "targets.sparse.k_policy.ceiling", minimum=1)
        extras = {"mass": self.mass, "temperature": self.temperature, "floor": self.floor}
        if self.kind == "fixed":
            given = [name for name, value in extras.items() if value is not None]
            if given:
                raise ManifestError(f"manifest field 'targets.sparse.k_policy': a fixed policy has no {given}")
            return
        if not _is_number(self.mass) or not 0 < self.mass <= 1:
            raise ManifestError(f"manifest field 'targets.sparse.k_policy.mass' must lie in (0, 1]; got {self.mass!r}")
        if not _is_number(self.temperature) or not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ManifestError("manifest field 'targets.sparse.k_policy.temperature' must be a positive number; "
                                f"got {self.temperature!r}")
        _require_int(self.floor, "targets.sparse.k_policy.floor", minimum=1)
        if self.floor > self.ceiling:
            raise ManifestError(f"manifest field 'targets.sparse.k_policy': floor {self.floor} exceeds ceiling "
                                f"{self.ceiling}")

    def bounds(self) -> tuple[int, int]:
        """(least, most) entries an item may keep (the least capped by the vocabulary at check time)."""
        return (self.ceiling, self.ceiling) if self.kind == "fixed" else (int(self.floor), self.ceiling)


@dataclass
class EncodingInfo:
    """The encoding of a pass's sparse-target columns (format v2, see :mod:`cache_schema.codec`):
    ``name``; for ``rank24-delta8`` also ``value_step`` (nats per value step) and ``id_table`` (the ids that
    take ranks 0, 1, ..., by descending frequency in the build's data; the other ids follow ascending)."""

    name: str
    value_step: float | None = None
    id_table: list[int] | None = None

    def check(self, vocab_size: int) -> None:
        if self.name not in SPARSE_ENCODINGS:
            raise ManifestError(f"manifest field 'targets.sparse.encoding.name' must be one of "
                                f"{list(SPARSE_ENCODINGS)}; got {self.name!r}")
        if self.name != ENCODING_PACKED:
            if self.value_step is not None or self.id_table is not None:
                raise ManifestError(f"manifest field 'targets.sparse.encoding': {self.name!r} has no value_step or "
                                    "id_table")
            return
        if not _is_number(self.value_step) or not 0 < self.value_step < math.inf:
            raise ManifestError("manifest field 'targets.sparse.encoding.value_step' must be a positive number; "
                                f"got {self.value_step!r}")
        table = self.id_table
        if not isinstance(table, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in table):
            raise ManifestError("manifest field 'targets.sparse.encoding.id_table' must be a list of integer ids")
        if table and (min(table) < 0 or max(table) >= vocab_size):
            raise ManifestError(f"manifest field 'targets.sparse.encoding.id_table' holds ids outside "
                                f"[0, teacher.shared_vocab_size={vocab_size})")
        if len(set(table)) != len(table):
            raise ManifestError("manifest field 'targets.sparse.encoding.id_table' lists an id twice")


@dataclass
class SparseInfo:
    """A ``shared`` cache's sparse targets (format v2): the k policy and the encoding."""

    k_policy: KPolicyInfo
    encoding: EncodingInfo

    @classmethod
    def from_dict(cls, data: Any) -> SparseInfo:
        if not isinstance(data, Mapping):
            raise ManifestError(f"manifest field 'targets.sparse' must be a JSON object; got {type(data).__name__}")
        unknown = [key for key in data if key not in ("k_policy", "encoding")]
        missing = [key for key in ("k_policy", "encoding") if key not in data]
        if unknown or missing:
            raise ManifestError(f"manifest field 'targets.sparse' must have exactly the keys k_policy and encoding; "
                                f"missing {missing}, unknown {unknown}")
        return cls(k_policy=_section(KPolicyInfo, data["k_policy"], "targets.sparse.k_policy"),
                   encoding=_section(EncodingInfo, data["encoding"], "targets.sparse.encoding"))


@dataclass
class TargetsInfo:
    """Which teacher passes are stored and at which temperatures.

    Format v2 describes a ``shared`` cache's targets in ``sparse``; format v1 had ``value_dtype`` and a fixed
    ``k`` (``shared`` only) instead. A ``cross`` cache has neither."""

    passes: list[str]
    temperatures: list[float]
    sparse: SparseInfo | None = None
    value_dtype: str | None = None
    k: int | None = None
    exact: ExactInfo | None = None  # exact targets (teacher hidden states + LM-head file), shared v2 only

    @property
    def width(self) -> int | None:
        """The most entries an item stores: v1's k or the v2 k policy's ceiling (None for ``cross``)."""
        if self.sparse is not None:
            return self.sparse.k_policy.ceiling
        return self.k

    def check(self, pipeline: str, format_version: int, shared_vocab_size: int | None) -> None:
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
        temps = self.temperatures
        if (
            not isinstance(temps, list)
            or not temps
            or not all(_is_number(x) and math.isfinite(x) and x > 0 for x in temps)
            or float(temps[0]) != 1.0
        ):
            raise ManifestError(
                f"manifest field 'targets.temperatures' must be a list of positive numbers starting with 1.0; "
                f"got {temps!r}"
            )
        if format_version == 1:
            self._check_v1(pipeline)
            return
        for name in ("value_dtype", "k"):
            if getattr(self, name) is not None:
                raise ManifestError(f"manifest field 'targets.{name}' belongs to format 1; format 2 describes the "
                                    "targets in 'targets.sparse'")
        if pipeline == PIPELINE_SHARED:
            if self.sparse is None and self.exact is None:
                raise ManifestError("manifest field 'targets.sparse' is required for pipeline 'shared' (or "
                                    "'targets.exact', for a cache of exact targets)")
            if self.sparse is not None:
                self.sparse.k_policy.check()
                self.sparse.encoding.check(int(shared_vocab_size))
            if self.exact is not None:
                self.exact.check()
        elif self.sparse is not None or self.exact is not None:
            raise ManifestError("manifest fields 'targets.sparse' and 'targets.exact' are only meaningful for "
                                "pipeline 'shared'")

    def _check_v1(self, pipeline: str) -> None:
        if self.sparse is not None or self.exact is not None:
            raise ManifestError("manifest fields 'targets.sparse' and 'targets.exact' belong to format 2")
        if self.value_dtype not in VALUE_DTYPES:
            raise ManifestError(
                f"manifest field 'targets.value_dtype' must be one of {list(VALUE_DTYPES)}; got {self.value_dtype!r}"
            )
        if pipeline == PIPELINE_SHARED:
            _require_int(self.k, "targets.k", minimum=1)
        elif self.k is not None:
            raise ManifestError(
                f"manifest field 'targets.k' is only meaningful for pipeline 'shared'; got {self.k!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"passes": self.passes, "temperatures": self.temperatures}
        if self.sparse is not None:
            out["sparse"] = {"k_policy": _without_none(self.sparse.k_policy),
                             "encoding": _without_none(self.sparse.encoding)}
        out.update({name: getattr(self, name) for name in ("value_dtype", "k") if getattr(self, name) is not None})
        if self.exact is not None:
            out["exact"] = dataclasses.asdict(self.exact)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> TargetsInfo:
        if not isinstance(data, Mapping):
            raise ManifestError(f"manifest field 'targets' must be a JSON object; got {type(data).__name__}")
        fields = dict(data)
        sparse = SparseInfo.from_dict(fields.pop("sparse")) if "sparse" in fields else None
        if "exact" in fields:
            fields["exact"] = _section(ExactInfo, fields["exact"], "targets.exact")
        return _section(cls, {**fields, **({"sparse": sparse} if sparse is not None else {})}, "targets")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _without_none(section: Any) -> dict[str, Any]:
    return {key: value for key, value in dataclasses.asdict(section).items() if value is not None}


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
    """The parsed ``manifest.json`` of a cache (format v2, or v1 when read from an older cache)."""

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
        targets = self.targets
        num_temperatures = len(targets.temperatures)
        if self.pipeline == PIPELINE_SHARED and self.format_version == 1:
            return shared_schema_v1(k=targets.k, value_dtype=targets.value_dtype, num_temperatures=num_temperatures,
                                    passes=targets.passes)
        encoding = targets.sparse.encoding.name if targets.sparse is not None else ENCODING_PACKED
        schema = schema_for(self.pipeline, passes=targets.passes, num_temperatures=num_temperatures, encoding=encoding,
                            sparse=targets.sparse is not None or self.pipeline != PIPELINE_SHARED)
        if targets.exact is not None:
            schema = with_exact_columns(schema, targets.passes, targets.exact.codec())
        return schema

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
        self.targets.check(self.pipeline, self.format_version, self.teacher.shared_vocab_size)
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
            "targets": self.targets.to_dict(),
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
                targets=TargetsInfo.from_dict(data["targets"]),
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
