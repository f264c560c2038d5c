"""A cache directory and every file in it: names, the build journal, completeness, the manifest last.

Layout (all names relative to the cache directory)::

    manifest.json              written last; its presence means the cache is complete
    shard-SSSSS-of-NNNNN.parquet
    build_config.json          the resolved build settings the directory was started with
    progress/survey.json       the data survey of the build: samples, skips, model facts (journal)
    progress/shard-SSSSS.json  one record per finished shard: its manifest entry and build statistics
    .<name>.<random>.tmp       a file being written (only while a writer runs, or left by a killed one)

Only this module names these files. A shard counts as complete when its record exists, names the shard's
file, and the file's size and SHA-256 equal the record's; a record is written only after its shard is in
place, so a kill at any point leaves a directory a resumed build can trust.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cache_schema.errors import ManifestError, ShardError
from cache_schema.files import atomic_write_json, sha256_of_file, temp_files_for
from cache_schema.manifest import MANIFEST_FILE, Manifest, ShardInfo

logger = logging.getLogger(__name__)

BUILD_CONFIG_FILE = "build_config.json"
JOURNAL_DIR = "progress"
SURVEY_FILE = "survey.json"
SHARD_GLOB = "shard-*.parquet"


def shard_file_name(index: int, total: int | None = None) -> str:
    """``shard-00003-of-00010.parquet`` (or ``shard-00003.parquet`` when the total is not known yet)."""
    if index < 0 or (total is not None and not 0 <= index < total):
        raise ValueError(f"shard index {index} is outside [0, {total})")
    if total is None:
        return f"shard-{index:05d}.parquet"
    return f"shard-{index:05d}-of-{total:05d}.parquet"


class CacheDirectory:
    """The files of one cache directory (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # -- names -------------------------------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_FILE

    @property
    def build_config_path(self) -> Path:
        return self.root / BUILD_CONFIG_FILE

    @property
    def journal_dir(self) -> Path:
        return self.root / JOURNAL_DIR

    @property
    def survey_path(self) -> Path:
        return self.journal_dir / SURVEY_FILE

    def shard_path(self, file_name: str) -> Path:
        return self.root / file_name

    def record_path(self, index: int) -> Path:
        return self.journal_dir / f"shard-{index:05d}.json"

    def shard_files(self) -> list[Path]:
        """Every file named like a shard, sorted."""
        return sorted(self.root.glob(SHARD_GLOB))

    def temp_files(self) -> list[Path]:
        """Temporary files a writer left (``.<name>.<random>.tmp``) in the directory and its journal."""
        found = sorted(self.root.glob(".*.tmp"))
        if self.journal_dir.is_dir():
            found += sorted(self.journal_dir.glob(".*.tmp"))
        return found

    def is_complete(self) -> bool:
        """True once the manifest is written."""
        return self.manifest_path.is_file()

    # -- JSON journal files --------------------------------------------------------------------------------

    @staticmethod
    def _read_json(path: Path) -> Any | None:
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{path}: not readable JSON ({exc}); delete it to rebuild what it describes") from exc

    def read_build_config(self) -> dict[str, Any] | None:
        """The stored build settings, or None for a directory no build has started in."""
        return self._read_json(self.build_config_path)

    def write_build_config(self, settings: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.build_config_path, settings)

    def read_survey(self) -> dict[str, Any] | None:
        return self._read_json(self.survey_path)

    def write_survey(self, survey: dict[str, Any]) -> None:
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.survey_path, survey)

    def read_record(self, index: int, file_name: str) -> dict[str, Any] | None:
        """The journal record of shard ``index``, or None when missing, unreadable or for another file."""
        try:
            record = self._read_json(self.record_path(index))
        except ManifestError:
            return None
        if not isinstance(record, dict) or record.get("info", {}).get("file") != file_name:
            return None
        return record

    def write_record(self, index: int, info: ShardInfo, stats: dict[str, Any]) -> None:
        """Record a finished shard; call only once the shard file is in place."""
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.record_path(index), {"shard": index, "info": asdict(info), "stats": stats})

    # -- resume ----------------------------------------------------------------------------------------------

    def shard_is_complete(self, index: int, file_name: str, *, verify_checksum: bool = True) -> bool:
        """True when the shard's record exists and its file has the recorded size (and SHA-256)."""
        record = self.read_record(index, file_name)
        path = self.shard_path(file_name)
        if record is None or not path.is_file():
            return False
        info = record["info"]
        if path.stat().st_size != info["bytes"]:
            logger.warning("shard %s: size differs from its journal record; rebuilding it", file_name)
            return False
        if verify_checksum and sha256_of_file(path) != info["sha256"]:
            logger.warning("shard %s: sha256 differs from its journal record; rebuilding it", file_name)
            return False
        return True

    def forget_shard(self, index: int, file_name: str) -> None:
        """Drop the record and the temporary files of a shard about to be (re)built."""
        self.record_path(index).unlink(missing_ok=True)
        for tmp in temp_files_for(self.shard_path(file_name)):
            tmp.unlink(missing_ok=True)

    def finished_records(self, names: Iterable[str]) -> tuple[list[dict[str, Any]], list[int]]:
        """(records of the shards whose record and file agree in size, indices of the others), in order."""
        records, missing = [], []
        for index, name in enumerate(names):
            record = self.read_record(index, name)
            path = self.shard_path(name)
            if record is None or not path.is_file() or path.stat().st_size != record["info"]["bytes"]:
                missing.append(index)
            else:
                records.append(record)
        return records, missing

    # -- the manifest --------------------------------------------------------------------------------------

    def write_manifest(self, manifest: Manifest) -> Path:
        """Write ``manifest.json`` last, after checking every listed shard is in place with its listed size;
        a temporary manifest left by a killed writer is removed first."""
        for tmp in temp_files_for(self.manifest_path):
            tmp.unlink(missing_ok=True)
        for shard in manifest.shards:
            path = self.shard_path(shard.file)
            if not path.is_file():
                raise ShardError(f"manifest lists shard {shard.file} but {path} does not exist; write it first")
            size = path.stat().st_size
            if size != shard.bytes:
                raise ShardError(
                    f"shard {shard.file}: manifest entry says {shard.bytes} bytes but the file has {size}; "
                    "use the ShardInfo that write_shard returned"
                )
        return manifest.save(self.root)


def write_manifest(directory: str | os.PathLike[str], manifest: Manifest) -> Path:
    """:meth:`CacheDirectory.write_manifest` of the cache at ``directory``; returns the manifest's path."""
    return CacheDirectory(directory).write_manifest(manifest)
