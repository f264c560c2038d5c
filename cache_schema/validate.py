"""``validate_cache``: every way a cache can disagree with its manifest or with the format's invariants.

Checks, in order: the manifest (format, version, fields); per shard the file checks of
:mod:`cache_schema.shard_checks` (presence, size, SHA-256, Parquet readability, row count, schema) and the
content invariants of :mod:`cache_schema.content_checks` on every row group and the uniqueness of
(sample_id, replica) across the cache (:mod:`cache_schema.row_keys`), then the manifest's target
counts; then the teacher LM-head file of exact targets (:mod:`cache_schema.head_file`: present, size,
SHA-256, tensor shape and dtype); then the directory's other files (:mod:`cache_schema.directory`): unlisted
shard files, temporary files left by a killed writer, the dataset card's data files, the build settings and
the journal records against the manifest.
"""

from __future__ import annotations

import os

from cache_schema.card import CARD_FILE, card_data_files, is_generated
from cache_schema.content_checks import PROBABILITY_TOLERANCE, Collector, GroupChecker, Problem
from cache_schema.directory import CacheDirectory
from cache_schema.errors import ManifestError, StoreError
from cache_schema.head_file import head_problems
from cache_schema.manifest import Manifest
from cache_schema.row_keys import SeenKeys, check_unique_rows
from cache_schema.shard_checks import FIX, ShardFileCheck, check_shard_file
from cache_schema.store import Store, open_store
from cache_schema.target_checks import TARGET_CHECKS

__all__ = ["Problem", "validate_cache", "PROBABILITY_TOLERANCE"]


# ---------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------


def _validate_shard(
    store: Store, manifest: Manifest, index: int, seen: SeenKeys, *, verify_checksums: bool, check_content: bool,
    max_rows: int,
) -> list[Problem]:
    found = check_shard_file(store, manifest, index, verify_checksums=verify_checksums)
    try:
        return _shard_problems(found, manifest, index, seen, check_content=check_content, max_rows=max_rows)
    finally:
        found.close()


def _shard_problems(
    found: ShardFileCheck, manifest: Manifest, index: int, seen: SeenKeys, *, check_content: bool, max_rows: int
) -> list[Problem]:
    entry = manifest.shards[index]
    out = Collector(entry.file, max_rows)
    for message in found.problems:
        out.add(message)
    parquet = found.parquet
    if parquet is None or not found.schema_matches:
        return out.finish()
    if not check_content:
        return out.finish()
    base = 0
    targets = 0
    for group in range(parquet.metadata.num_row_groups):
        try:
            table = parquet.read_row_group(group)
        except Exception as exc:  # damaged pages raise Arrow, OS and decoding errors alike
            out.add(
                f"row group {group} (rows from {base}) is not readable ({type(exc).__name__}: {exc}); {FIX}"
            )
            return out.finish()
        try:
            checker = GroupChecker(manifest, table, base, out)
            targets += TARGET_CHECKS[manifest.pipeline](checker, checker.common())
            seen.add(check_unique_rows(checker, seen))  # across row groups and shards
        except Exception as exc:  # damaged bytes can decode to arbitrary values; report, never crash
            out.add(f"row group {group} (rows from {base}) could not be checked: {type(exc).__name__}: {exc}")
            return out.finish()
        base += table.num_rows
    if targets != entry.num_targets:
        out.add(f"num_targets: manifest says {entry.num_targets}, the shard holds {targets}")
    return out.finish()


def validate_cache(
    path: str | os.PathLike[str] | Store,
    *,
    verify_checksums: bool = True,
    check_content: bool = True,
    max_rows_per_check: int = 5,
) -> list[Problem]:
    """All problems found in the cache at ``path``; an empty list means the cache is intact.

    Args:
        path: the cache directory: a path, a URL (:mod:`cache_schema.store`) or a store.
        verify_checksums: hash every shard and compare with the manifest's SHA-256.
        check_content: read every row group and check the content invariants.
        max_rows_per_check: rows reported per (shard, field, check) before the rest are counted.
    """
    try:
        store = open_store(path)
        manifest = Manifest.load(store)
    except (ManifestError, StoreError) as exc:
        return [Problem(str(exc), field="manifest")]
    problems: list[Problem] = []
    seen = SeenKeys()
    for index in range(len(manifest.shards)):
        problems += _validate_shard(
            store,
            manifest,
            index,
            seen,
            verify_checksums=verify_checksums,
            check_content=check_content,
            max_rows=max_rows_per_check,
        )
    exact = manifest.targets.exact
    problems += [Problem(message, exact.head_file) for message in head_problems(
        store, exact, manifest.teacher.shared_vocab_size, verify_checksum=verify_checksums)]
    return problems + _directory_problems(CacheDirectory(store), manifest)


def _directory_problems(directory: CacheDirectory, manifest: Manifest) -> list[Problem]:
    """The directory's files besides the listed shards: strays, leftovers, settings and journal."""
    problems: list[Problem] = []
    listed = {s.file for s in manifest.shards}
    for stray in directory.shard_files():
        if stray not in listed:
            problems.append(Problem("a shard file that the manifest does not list (left by an unfinished build?)",
                                    stray))
    for tmp in directory.temp_files():
        problems.append(Problem(f"a temporary file left by a killed writer ({directory.store.display(tmp)}); "
                                "delete it", tmp))
    if directory.store.is_file(CARD_FILE):
        card = directory.store.read_bytes(CARD_FILE).decode("utf-8", "replace")
        if is_generated(card) and card_data_files(card) != [s.file for s in manifest.shards]:
            problems.append(Problem("the dataset card's data files are not the manifest's shards; rewrite it with "
                                    "`tide-cache relayout`", CARD_FILE, field="card"))
    try:
        directory.read_build_config()  # runtime settings (paths, device) may differ between runs: only parse
    except ManifestError as exc:
        problems.append(Problem(str(exc), field="build_config"))
    for index, shard in enumerate(manifest.shards):
        record = directory.read_record(index, shard.file)
        if record is not None and record["info"] != shard.__dict__:
            problems.append(Problem(f"journal record {directory.record_path(index)} disagrees with the manifest "
                                    f"entry ({record['info']} vs {shard.__dict__})", shard.file, field="journal"))
    return problems
