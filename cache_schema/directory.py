"""A cache directory and every file in it: names, the build journal, completeness, the manifest last.

Layout (all names relative to the cache directory, which is a local path or any URL of
:mod:`cache_schema.store`)::

    manifest.json              written last; its presence means the cache is complete
    README.md                  the dataset card (Hub YAML header: the data files; teacher, noise, k, columns)
    data/shard-SSSSS-of-NNNNN.parquet
    build_config.json          the resolved build settings the directory was started with
    progress/survey.json       the data survey of the build: samples, skips, model facts (journal)
    progress/shard-SSSSS.json  one record per finished shard: its manifest entry and build statistics
    .<name>.<random>.tmp       a file being written (local stores only; while a writer runs, or left by a kill)

Only the shards lie under ``data/``, so ``pyarrow.dataset.dataset(<dir>/data)``, duckdb and polars read the
folder as it is, and the card's header points ``datasets.load_dataset(<dir>)`` at the shards. Caches of the
earlier layout keep their shards at the top (``shard-*.parquet``); they are still read, and
``tide-cache relayout`` (:meth:`CacheDirectory.relayout`) moves them under ``data/``.

Only this module names these files. A shard counts as complete when its record exists, names the shard's
file, and the file's size (and, on local disks, SHA-256) equal the record's; a record is written only after
its shard is in place, so a kill at any point leaves a directory a resumed build can trust. An object store
never shows a partial upload, so there the size is checked without re-reading the shard.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, replace
from typing import Any

from cache_schema.card import CARD_FILE, write_card
from cache_schema.errors import ManifestError, ShardError
from cache_schema.files import temp_files_for
from cache_schema.manifest import DATA_DIR, MANIFEST_FILE, Manifest, ShardInfo
from cache_schema.store import Store, open_store

logger = logging.getLogger(__name__)

BUILD_CONFIG_FILE = "build_config.json"
JOURNAL_DIR = "progress"
SURVEY_FILE = "survey.json"
SHARD_GLOB = "shard-*.parquet"
RELAYOUT_COMMAND = "tide-cache relayout"


def shard_file_name(index: int, total: int | None = None) -> str:
    """``shard-00003-of-00010.parquet`` (or ``shard-00003.parquet`` when the total is not known yet)."""
    if index < 0 or (total is not None and not 0 <= index < total):
        raise ValueError(f"shard index {index} is outside [0, {total})")
    if total is None:
        return f"shard-{index:05d}.parquet"
    return f"shard-{index:05d}-of-{total:05d}.parquet"


def shard_entry(file_name: str) -> str:
    """The name of shard ``file_name`` in the cache (and its manifest ``file``): ``data/<file_name>``."""
    return f"{DATA_DIR}/{file_name}"


class LegacyLayoutError(ShardError):
    """A build was asked to continue in a directory of the earlier layout (shards at the top)."""


class CacheDirectory:
    """The files of one cache directory (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike[str] | Store) -> None:
        self.store = open_store(root)
        self.root = self.store.display()

    # -- names -------------------------------------------------------------------------------------------

    @property
    def survey_name(self) -> str:
        return f"{JOURNAL_DIR}/{SURVEY_FILE}"

    @property
    def survey_path(self) -> str:
        return self.store.display(self.survey_name)

    @staticmethod
    def record_name(index: int) -> str:
        return f"{JOURNAL_DIR}/shard-{index:05d}.json"

    def record_path(self, index: int) -> str:
        return self.store.display(self.record_name(index))

    def shard_files(self) -> list[str]:
        """Every file named like a shard (under ``data/``, or at the top in the earlier layout), sorted."""
        return self.store.glob(f"{DATA_DIR}/{SHARD_GLOB}") + self.legacy_shard_files()

    def legacy_shard_files(self) -> list[str]:
        """Shards at the top of the directory: the layout before ``data/``."""
        return self.store.glob(SHARD_GLOB)

    def temp_files(self) -> list[str]:
        """Temporary files a writer left (``.<name>.<random>.tmp``) in the directory, its data and journal."""
        return [name for folder in ("", f"{DATA_DIR}/", f"{JOURNAL_DIR}/")
                for name in self.store.glob(f"{folder}.*.tmp")]

    def metadata_files(self) -> list[str]:
        """The files besides the shards and the manifest that exist: settings, card and journal."""
        return [name for name in (BUILD_CONFIG_FILE, CARD_FILE) if self.store.is_file(name)] + \
            self.store.glob(f"{JOURNAL_DIR}/*.json")

    def is_complete(self) -> bool:
        """True once the manifest is written."""
        return self.store.is_file(MANIFEST_FILE)

    def refuse_legacy_layout(self) -> None:
        """Raise :class:`LegacyLayoutError` naming the conversion command when shards lie at the top."""
        legacy = self.legacy_shard_files()
        if legacy:
            raise LegacyLayoutError(
                f"{self.root} holds {len(legacy)} shard(s) at its top ({legacy[0]}, ...): the layout before shards "
                f"moved under {DATA_DIR}/; run `{RELAYOUT_COMMAND} {self.root}` to convert it first")

    # -- JSON journal files --------------------------------------------------------------------------------

    def _read_json(self, name: str) -> Any | None:
        if not self.store.is_file(name):
            return None
        try:
            return json.loads(self.store.read_bytes(name).decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{self.store.display(name)}: not readable JSON ({exc}); delete it to rebuild what "
                                "it describes") from exc

    def _write_json(self, name: str, payload: Any) -> None:
        text = json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n"
        self.store.write_bytes(name, text.encode("utf-8"))

    def read_build_config(self) -> dict[str, Any] | None:
        """The stored build settings, or None for a directory no build has started in."""
        return self._read_json(BUILD_CONFIG_FILE)

    def write_build_config(self, settings: dict[str, Any]) -> None:
        self.store.makedirs()
        self._write_json(BUILD_CONFIG_FILE, settings)

    def read_survey(self) -> dict[str, Any] | None:
        return self._read_json(self.survey_name)

    def write_survey(self, survey: dict[str, Any]) -> None:
        self.store.makedirs(JOURNAL_DIR)
        self._write_json(self.survey_name, survey)

    def read_record(self, index: int, file_name: str) -> dict[str, Any] | None:
        """The journal record of shard ``index`` (``file_name`` as the manifest lists it, ``data/...``), or None
        when missing, unreadable or for another file."""
        try:
            record = self._read_json(self.record_name(index))
        except ManifestError:
            return None
        if not isinstance(record, dict) or record.get("info", {}).get("file") != file_name:
            return None
        return record

    def write_record(self, index: int, info: ShardInfo, stats: dict[str, Any]) -> None:
        """Record a finished shard; call only once the shard file is in place."""
        self.store.makedirs(JOURNAL_DIR)
        self._write_json(self.record_name(index), {"shard": index, "info": asdict(info), "stats": stats})

    # -- resume ----------------------------------------------------------------------------------------------

    def shard_is_complete(self, index: int, file_name: str, *, verify_checksum: bool | None = None) -> bool:
        """True when shard ``file_name``'s (the layout's name, without ``data/``) record exists and its file has
        the recorded size and, with ``verify_checksum`` (default: on local stores), SHA-256."""
        entry = shard_entry(file_name)
        record = self.read_record(index, entry)
        if record is None:
            return False
        size = self.store.size(entry)
        if size is None:
            return False
        info = record["info"]
        if size != info["bytes"]:
            logger.warning("shard %s: size differs from its journal record; rebuilding it", entry)
            return False
        if verify_checksum is None:
            verify_checksum = self.store.is_local
        if verify_checksum and self.store.sha256(entry) != info["sha256"]:
            logger.warning("shard %s: sha256 differs from its journal record; rebuilding it", entry)
            return False
        return True

    def forget_shard(self, index: int, file_name: str) -> None:
        """Drop the record and the temporary files of a shard about to be (re)built."""
        self.store.remove(self.record_name(index))
        if self.store.is_local:
            for tmp in temp_files_for(self.store.local_path(shard_entry(file_name))):
                tmp.unlink(missing_ok=True)

    def finished_records(self, names: Iterable[str]) -> tuple[list[dict[str, Any]], list[int]]:
        """(records of the shards whose record and file agree in size, indices of the others), in order;
        ``names`` are the layout's shard file names."""
        records, missing = [], []
        for index, name in enumerate(names):
            entry = shard_entry(name)
            record = self.read_record(index, entry)
            if record is None or self.store.size(entry) != record["info"]["bytes"]:
                missing.append(index)
            else:
                records.append(record)
        return records, missing

    # -- the manifest --------------------------------------------------------------------------------------

    def write_manifest(self, manifest: Manifest) -> str:
        """Write the dataset card, then ``manifest.json`` last, after checking every listed shard is in place
        with its listed size; a temporary manifest left by a killed writer is removed first. Returns where
        the manifest was written."""
        if self.store.is_local:
            for tmp in temp_files_for(self.store.local_path(MANIFEST_FILE)):
                tmp.unlink(missing_ok=True)
        for shard in manifest.shards:
            size = self.store.size(shard.file)
            if size is None:
                raise ShardError(f"manifest lists shard {shard.file} but {self.store.display(shard.file)} does not "
                                 "exist; write it first")
            if size != shard.bytes:
                raise ShardError(
                    f"shard {shard.file}: manifest entry says {shard.bytes} bytes but the file has {size}; "
                    "use the ShardInfo that write_shard returned"
                )
        write_card(self.store, manifest)
        return manifest.save(self.store)

    # -- conversion from the earlier layout ------------------------------------------------------------------

    def relayout(self) -> list[str]:
        """Move a cache of the earlier layout (shards at the top) to this one; returns the moved shards.

        Order keeps the directory readable at every step: each shard is linked (or copied) under ``data/``,
        the journal records and then the manifest are rewritten to name the new files (the manifest last, as
        always), and only then are the old names removed. A killed conversion is finished by running it
        again. A cache already in this layout is left as it is."""
        legacy = set(self.legacy_shard_files())
        manifest = Manifest.load(self.store) if self.is_complete() else None
        listed = [s.file for s in manifest.shards] if manifest is not None else []
        moved = sorted(legacy | {name for name in listed if "/" not in name})
        for name in moved:
            if name in legacy and not self.store.is_file(shard_entry(name)):
                self.store.copy_within(name, shard_entry(name))
        for record_name in self.store.glob(f"{JOURNAL_DIR}/shard-*.json"):
            record = self._read_json(record_name)
            if isinstance(record, dict) and record.get("info", {}).get("file") in moved:
                record["info"]["file"] = shard_entry(record["info"]["file"])
                self._write_json(record_name, record)
        if manifest is not None:
            manifest.shards = [replace(s, file=shard_entry(s.file)) if "/" not in s.file else s
                               for s in manifest.shards]
            self.write_manifest(manifest)
        for name in legacy:
            self.store.remove(name)
        return moved


def write_manifest(directory: str | os.PathLike[str] | Store, manifest: Manifest) -> str:
    """:meth:`CacheDirectory.write_manifest` of the cache at ``directory``; returns the manifest's location."""
    return CacheDirectory(directory).write_manifest(manifest)
