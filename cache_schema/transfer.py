"""Copying a finished cache between stores (``tide-cache push`` / ``pull``), resumably and verified.

:func:`copy_cache` copies every file of a finished cache from one store to another (local ↔ any URL, or
between two URLs): the shards first, then the settings, the card and the journal, and ``manifest.json``
last, so the target is a cache only once everything it lists is there. Each file lands atomically (a rename
locally, one upload on an object store). Re-running a copy that was killed skips the files the target
already holds at their size; every copied or skipped file is then checked by SHA-256 against the manifest
(shards) or the source (the rest), read back from the target, and a file that disagrees is copied once more
before the copy gives up. A target that already holds another cache (a different manifest) is refused.

Pushing to a Hugging Face Hub repository goes through :mod:`cache_schema.hub` instead, which batches the
files into commits and verifies them with the hashes the Hub reports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cache_schema.directory import CacheDirectory
from cache_schema.errors import CacheError
from cache_schema.manifest import MANIFEST_FILE, Manifest
from cache_schema.store import Store

logger = logging.getLogger(__name__)


class TransferError(CacheError):
    """A copy cannot start (no finished cache, another cache at the target) or its bytes do not verify."""


@dataclass
class TransferReport:
    """What a copy did: files copied and skipped (already there), bytes copied, files verified."""

    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_copied: int = 0
    verified: int = 0


def finished_manifest(source: Store) -> Manifest:
    """The manifest of the finished, current-layout cache at ``source`` (else :class:`TransferError`)."""
    directory = CacheDirectory(source)
    if not directory.is_complete():
        raise TransferError(f"{source.display()}: no {MANIFEST_FILE}; only a finished cache can be copied (finish "
                            "its build first)")
    directory.refuse_legacy_layout()
    return Manifest.load(source)


def transfer_order(source: Store, manifest: Manifest) -> list[str]:
    """The files of a finished cache in the order they are copied: shards, the rest, the manifest last."""
    return [s.file for s in manifest.shards] + CacheDirectory(source).metadata_files() + [MANIFEST_FILE]


def refuse_another_cache(target: Store, manifest_bytes: bytes) -> bool:
    """True when ``target`` already holds this very cache's manifest; :class:`TransferError` when it holds
    another cache's."""
    if not target.is_file(MANIFEST_FILE):
        return False
    if target.read_bytes(MANIFEST_FILE) == manifest_bytes:
        return True
    raise TransferError(f"{target.display()} already holds another cache (its {MANIFEST_FILE} differs); copy to a "
                        "new location or delete that cache first")


def copy_file(source: Store, target: Store, name: str) -> None:
    """Copy one file; atomic at the target (a partial copy never appears under ``name``)."""
    if source.is_local:
        target.upload(source.local_path(name), name, keep=True)
        return
    with target.spool(name) as tmp:
        source.download(name, tmp)
        target.upload(tmp, name)


def copy_cache(source: Store, target: Store, *, verify: bool = True) -> TransferReport:
    """Copy the finished cache at ``source`` to ``target`` (see the module docstring); returns the report."""
    manifest = finished_manifest(source)
    manifest_bytes = source.read_bytes(MANIFEST_FILE)
    already_there = refuse_another_cache(target, manifest_bytes)
    names = transfer_order(source, manifest)
    expected = {s.file: s.sha256 for s in manifest.shards}
    report = TransferReport()
    target.makedirs()
    for name in names[:-1]:
        size = source.size(name)
        if target.size(name) == size:
            report.skipped.append(name)
            continue
        logger.info("copying %s (%d bytes) to %s", name, size, target.display())
        copy_file(source, target, name)
        report.copied.append(name)
        report.bytes_copied += int(size or 0)
    if verify:
        for name in names[:-1]:
            want = expected.get(name) or source.sha256(name)
            if target.sha256(name) == want:
                report.verified += 1
                continue
            logger.warning("%s: sha256 differs after the copy; copying it again", target.display(name))
            copy_file(source, target, name)
            found = target.sha256(name)
            if found != want:
                raise TransferError(f"{target.display(name)}: sha256 {found} after copying it twice, expected {want}; "
                                    "the target store changes what it is given")
            report.verified += 1
    if already_there:
        report.skipped.append(MANIFEST_FILE)
    else:
        target.write_bytes(MANIFEST_FILE, manifest_bytes)
        report.copied.append(MANIFEST_FILE)
        report.bytes_copied += len(manifest_bytes)
    if verify:
        if target.read_bytes(MANIFEST_FILE) != manifest_bytes:
            raise TransferError(f"{target.display(MANIFEST_FILE)}: differs from the source's after the copy")
        report.verified += 1
    return report
