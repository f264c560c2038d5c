"""Pushing a finished local cache to a Hugging Face Hub dataset repository with ``huggingface_hub``.

The files go up in commits: the shards in batches (``batch_files`` files or ``batch_bytes`` bytes per
commit), then the settings, card and journal, and ``manifest.json`` in a commit of its own, last, so the
repository holds a cache only once everything it lists is in. Re-running a push that was killed skips every
file the repository already holds with the same content, so it resumes where it stopped (and the Hub keeps
already uploaded large-file objects, so even a half-finished batch is not sent twice). After the upload,
every file is checked against the hashes the Hub reports: the SHA-256 of a large-file (LFS) object, the git
blob id of a small file; the repository is never downloaded to verify it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import Any

from cache_schema.files import sha256_of_file
from cache_schema.manifest import MANIFEST_FILE
from cache_schema.store import LocalStore
from cache_schema.transfer import TransferError, TransferReport, finished_manifest, transfer_order

logger = logging.getLogger(__name__)

REPO_TYPE = "dataset"
BATCH_FILES = 64
BATCH_BYTES = 16 << 30


def git_blob_id(path: Any) -> str:
    """The git object id of a file's bytes (``sha1("blob <size>\\0" + bytes)``), as the Hub lists it."""
    with open(path, "rb") as handle:
        data = handle.read()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _remote_files(api: Any, repo_id: str, prefix: str, revision: str | None) -> dict[str, Any]:
    """The repository's files under ``prefix``, by path relative to it."""
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError
    from huggingface_hub.hf_api import RepoFile

    try:
        entries = api.list_repo_tree(repo_id, prefix or None, recursive=True, repo_type=REPO_TYPE, revision=revision)
        files = [entry for entry in entries if isinstance(entry, RepoFile)]
    except (EntryNotFoundError, RepositoryNotFoundError):
        return {}
    cut = len(prefix) + 1 if prefix else 0
    return {entry.path[cut:]: entry for entry in files}


def _same_content(local: LocalStore, name: str, remote: Any, sha256: str | None) -> bool:
    """Whether the Hub's copy of ``name`` has the local file's content, by the hash the Hub keeps for it."""
    path = local.local_path(name)
    if remote is None or remote.size != path.stat().st_size:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == (sha256 or sha256_of_file(path))
    return remote.blob_id == git_blob_id(path)


def _batches(names: list[str], local: LocalStore, batch_files: int, batch_bytes: int) -> Iterable[list[str]]:
    batch: list[str] = []
    size = 0
    for name in names:
        batch.append(name)
        size += local.local_path(name).stat().st_size
        if len(batch) >= batch_files or size >= batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def push_to_repo(
    source: LocalStore,
    repo_id: str,
    *,
    path_in_repo: str = "",
    api: Any = None,
    private: bool | None = None,
    revision: str | None = None,
    batch_files: int = BATCH_FILES,
    batch_bytes: int = BATCH_BYTES,
) -> TransferReport:
    """Push the finished cache at ``source`` to the dataset repository ``repo_id`` (created if missing),
    under ``path_in_repo``; ``api`` replaces ``huggingface_hub.HfApi()`` (tests)."""
    from huggingface_hub import CommitOperationAdd

    if not source.is_local:
        raise TransferError(f"{source.display()}: a Hub push uploads a local cache; pull this one first")
    manifest = finished_manifest(source)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    prefix = path_in_repo.strip("/")
    where = f"hf://datasets/{repo_id}" + (f"/{prefix}" if prefix else "")
    api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
    names = transfer_order(source, manifest)
    expected = {s.file: s.sha256 for s in manifest.shards}
    remote = _remote_files(api, repo_id, prefix, revision)
    manifest_there = _same_content(source, MANIFEST_FILE, remote.get(MANIFEST_FILE), None)
    if MANIFEST_FILE in remote and not manifest_there:
        raise TransferError(f"{where} already holds another cache (its {MANIFEST_FILE} differs); push to a new "
                            "repository or path, or delete that cache first")
    report = TransferReport()
    todo = [n for n in names[:-1] if not _same_content(source, n, remote.get(n), expected.get(n))]
    report.skipped = [n for n in names[:-1] if n not in todo]
    shards = [n for n in todo if n in expected]
    groups = [*_batches(shards, source, batch_files, batch_bytes), *([[n for n in todo if n not in expected]]
                                                                    if len(shards) < len(todo) else [])]
    for number, group in enumerate(groups, 1):
        operations = [CommitOperationAdd(path_in_repo="/".join(filter(None, (prefix, n))),
                                         path_or_fileobj=str(source.local_path(n))) for n in group]
        logger.info("pushing commit %d of %d (%d files) to %s", number, len(groups), len(group), where)
        api.create_commit(repo_id, operations, commit_message=f"tide-cache push: {len(group)} file(s) "
                          f"({number}/{len(groups)})", repo_type=REPO_TYPE, revision=revision)
        report.copied += group
        report.bytes_copied += sum(source.local_path(n).stat().st_size for n in group)
    _verify(api, repo_id, prefix, revision, source, names[:-1], expected, where, report)
    if not manifest_there:
        api.create_commit(repo_id, [CommitOperationAdd(path_in_repo="/".join(filter(None, (prefix, MANIFEST_FILE))),
                                                       path_or_fileobj=str(source.local_path(MANIFEST_FILE)))],
                          commit_message="tide-cache push: manifest.json (the cache is complete)",
                          repo_type=REPO_TYPE, revision=revision)
        report.copied.append(MANIFEST_FILE)
    else:
        report.skipped.append(MANIFEST_FILE)
    _verify(api, repo_id, prefix, revision, source, [MANIFEST_FILE], expected, where, report)
    return report


def _verify(api: Any, repo_id: str, prefix: str, revision: str | None, source: LocalStore, names: list[str],
            expected: dict[str, str], where: str, report: TransferReport) -> None:
    remote = _remote_files(api, repo_id, prefix, revision)
    wrong = [n for n in names if not _same_content(source, n, remote.get(n), expected.get(n))]
    if wrong:
        raise TransferError(f"{where}: {len(wrong)} file(s) do not match the local cache after the push (first: "
                            f"{wrong[0]}); check the local cache with `tide-cache validate`, then push again")
    report.verified += len(names)
