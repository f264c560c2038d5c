"""Builds own their output: what a build may write into, resume, or delete.

Before anything is written, :func:`claim_output` decides what ``--output`` allows:

* missing, or holding nothing but temporary files (``.*.tmp``, left by a writer killed before its first
  rename): a new build;
* holding a build's journal (``build_config.json``): that build, resumed — the settings are then compared
  (:func:`stages.cache_build.config.check_or_store_config`) and the inputs re-fingerprinted
  (:mod:`stages.cache_build.input_check`);
* anything else — another cache without a build journal, an unrelated file named like a shard, any other
  file: refused, naming what is there.

``--overwrite`` deletes the cache files (manifest, dataset card, build settings, journal, shard-named files,
temporary files) and starts again; it never deletes anything a cache directory does not hold, so a mistyped
``--output`` pointing at a directory of other files is refused even then. Once the layout is known,
:func:`check_shard_names` refuses shard-named files in an owned directory that are not this layout's.
"""

from __future__ import annotations

import fnmatch
import logging
import posixpath
from collections.abc import Iterable

from cache_schema.card import CARD_FILE
from cache_schema.directory import BUILD_CONFIG_FILE, JOURNAL_DIR, SHARD_GLOB, CacheDirectory
from cache_schema.manifest import DATA_DIR, MANIFEST_FILE

logger = logging.getLogger(__name__)

_SHOWN = 5  # entries named in a refusal
_FOLDERS = ("", f"{DATA_DIR}/", f"{JOURNAL_DIR}/")  # where a cache keeps files (one level each)


class OutputOwnershipError(ValueError):
    """``--output`` holds files this build did not write (or may not delete)."""


def _names(names: Iterable[str]) -> str:
    shown = sorted(names)
    more = f" and {len(shown) - _SHOWN} more" if len(shown) > _SHOWN else ""
    return ", ".join(shown[:_SHOWN]) + more


def _is_temp(name: str) -> bool:
    leaf = posixpath.basename(name)
    return leaf.startswith(".") and leaf.endswith(".tmp")


def _is_cache_entry(name: str) -> bool:
    """Whether file ``name`` (relative to the cache root) is one a cache directory holds."""
    folder, leaf = posixpath.split(name)
    if _is_temp(name):
        return True
    if folder == "":
        return leaf in (MANIFEST_FILE, BUILD_CONFIG_FILE, CARD_FILE) or fnmatch.fnmatchcase(leaf, SHARD_GLOB)
    if folder == DATA_DIR:
        return fnmatch.fnmatchcase(leaf, SHARD_GLOB)
    return folder == JOURNAL_DIR and leaf.endswith(".json")


def _entries(directory: CacheDirectory) -> list[str]:
    """The files at the top of the output and in its data and journal folders (a path or any store URL)."""
    store = directory.store
    return sorted({name for folder in _FOLDERS for name in store.glob(f"{folder}*")})


def claim_output(directory: CacheDirectory, *, overwrite: bool, may_delete: bool = True) -> None:
    """Refuse an ``--output`` this build does not own (see the module docstring); with ``overwrite``, delete
    its cache files first. ``may_delete`` is False on every rank but the first, which alone deletes."""
    root, store = directory.root, directory.store
    entries = _entries(directory) if store.exists() else []
    if overwrite:
        foreign = [e for e in entries if not _is_cache_entry(e)]
        if foreign:
            raise OutputOwnershipError(
                f"--output {root} holds files that are not part of a cache ({_names(foreign)}); --overwrite only "
                "deletes cache files: choose an empty or new --output")
        if entries and may_delete:
            logger.warning("--overwrite: deleting %d cache files in %s (%s)", len(entries), root, _names(entries))
            for entry in entries:
                store.remove(entry)
        return
    kept = [e for e in entries if not _is_temp(e)]
    if not kept or store.is_file(BUILD_CONFIG_FILE):
        return
    what = ("a cache without a build journal (manifest.json but no build_config.json)"
            if store.is_file(MANIFEST_FILE) else f"files no build wrote ({_names(kept)})")
    raise OutputOwnershipError(
        f"--output {root} is not empty and holds {what}; a build writes only into an empty directory or resumes "
        "its own: choose another --output, or rerun with --overwrite to delete the cache files there and start "
        "again")


def check_shard_names(directory: CacheDirectory, expected: Iterable[str]) -> None:
    """Refuse shard-named files that are not among ``expected`` (this build's layout): a build never
    overwrites, and a manifest never sits next to, a shard it did not write."""
    wanted = {posixpath.basename(name) for name in expected}
    strays = [name for name in directory.shard_files() if posixpath.basename(name) not in wanted]
    if strays:
        raise OutputOwnershipError(
            f"--output {directory.root} holds shard files that are not this build's ({_names(strays)}); remove "
            "them, or rerun with --overwrite to delete the cache files there and start again")
