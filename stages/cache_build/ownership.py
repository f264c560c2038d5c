"""Builds own their output: what a build may write into, resume, or delete.

Before anything is written, :func:`claim_output` decides what ``--output`` allows:

* missing, or holding nothing but temporary files (``.*.tmp``, left by a writer killed before its first
  rename): a new build;
* holding a build's journal (``build_config.json``): that build, resumed — the settings are then compared
  (:func:`stages.cache_build.config.check_or_store_config`) and the inputs re-fingerprinted
  (:mod:`stages.cache_build.input_check`);
* anything else — another cache without a build journal, an unrelated file named like a shard, any other
  file: refused, naming what is there.

``--overwrite`` deletes the cache files (manifest, build settings, journal, shard-named files, temporary
files) and starts again; it never deletes anything a cache directory does not hold, so a mistyped
``--output`` pointing at a directory of other files is refused even then. Once the layout is known,
:func:`check_shard_names` refuses shard-named files in an owned directory that are not this layout's.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

from cache_schema.directory import SHARD_GLOB, CacheDirectory

logger = logging.getLogger(__name__)

_SHOWN = 5  # entries named in a refusal


class OutputOwnershipError(ValueError):
    """``--output`` holds files this build did not write (or may not delete)."""


def _names(paths: Iterable[Path]) -> str:
    names = sorted(p.name for p in paths)
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _is_cache_entry(directory: CacheDirectory, entry: Path) -> bool:
    """Whether ``entry`` is a file a cache directory holds (a build's, or a finished cache's)."""
    if entry.name.startswith(".") and entry.name.endswith(".tmp"):
        return entry.is_file()
    if entry == directory.journal_dir:
        return entry.is_dir()
    return entry.is_file() and (entry in (directory.manifest_path, directory.build_config_path)
                                or entry.match(SHARD_GLOB))


def _is_temp(entry: Path) -> bool:
    return entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file()


def claim_output(directory: CacheDirectory, *, overwrite: bool, may_delete: bool = True) -> None:
    """Refuse an ``--output`` this build does not own (see the module docstring); with ``overwrite``, delete
    its cache files first. ``may_delete`` is False on every rank but the first, which alone deletes."""
    root = directory.root
    if root.exists() and not root.is_dir():
        raise OutputOwnershipError(f"--output {root} exists and is not a directory")
    entries = sorted(root.iterdir()) if root.is_dir() else []
    if overwrite:
        foreign = [e for e in entries if not _is_cache_entry(directory, e)]
        if foreign:
            raise OutputOwnershipError(
                f"--output {root} holds files that are not part of a cache ({_names(foreign)}); --overwrite only "
                "deletes cache files: choose an empty or new --output")
        if entries and may_delete:
            logger.warning("--overwrite: deleting %d cache entries in %s (%s)", len(entries), root, _names(entries))
            for entry in entries:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        return
    kept = [e for e in entries if not _is_temp(e)]
    if not kept or directory.build_config_path.is_file():
        return
    what = ("a cache without a build journal (manifest.json but no build_config.json)"
            if directory.manifest_path.is_file() else f"files no build wrote ({_names(kept)})")
    raise OutputOwnershipError(
        f"--output {root} is not empty and holds {what}; a build writes only into an empty directory or resumes "
        "its own: choose another --output, or rerun with --overwrite to delete the cache files there and start "
        "again")


def check_shard_names(directory: CacheDirectory, expected: Iterable[str]) -> None:
    """Refuse shard-named files that are not among ``expected`` (this build's layout): a build never
    overwrites, and a manifest never sits next to, a shard it did not write."""
    wanted = set(expected)
    strays = [p for p in directory.shard_files() if p.name not in wanted]
    if strays:
        raise OutputOwnershipError(
            f"--output {directory.root} holds shard files that are not this build's ({_names(strays)}); remove "
            "them, or rerun with --overwrite to delete the cache files there and start again")
