"""``push``, ``pull`` and ``relayout``: moving a cache to where it is used (no torch, no model code).

``push DIR TARGET`` copies a finished local cache to a Hub dataset repository (``owner/name`` or
``hf://datasets/owner/name[/path]``, uploaded with ``huggingface_hub`` in commits) or to any other URL or
directory (``s3://bucket/prefix``, ``gs://...``, ``file:///...``, ``./dir``); ``pull SOURCE DIR`` copies a
cache from a URL or repository to a local directory. Both resume a killed copy and verify every file's
SHA-256 after it; the manifest is always copied last. ``relayout DIR`` moves a cache of the earlier layout
(shards at the top) under ``data/`` and writes its dataset card.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from cache_schema.directory import CacheDirectory
from cache_schema.errors import CacheError
from cache_schema.store import RemoteStore, Store, is_url, open_store
from cache_schema.transfer import TransferError, TransferReport, copy_cache

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_DATASETS = "hf://datasets/"


def hub_target(text: str) -> tuple[str, str] | None:
    """(repo id, path in the repo) when ``text`` names a Hub dataset repository, else None.

    ``owner/name`` (when no such local path exists) and ``hf://datasets/owner/name[/path]`` do."""
    if text.startswith(HUB_DATASETS):
        parts = text[len(HUB_DATASETS):].strip("/").split("/")
        if len(parts) < 2:
            raise TransferError(f"{text}: a Hub dataset URL is hf://datasets/<owner>/<name>[/<path>]")
        return "/".join(parts[:2]), "/".join(parts[2:])
    if not is_url(text) and REPO_ID.match(text):
        if Path(text).exists():
            raise TransferError(f"{text} is both a local path and a Hub repository id; write ./{text} for the "
                                f"directory or {HUB_DATASETS}{text} for the repository")
        return text, ""
    return None


def source_store(text: str) -> Store:
    """The store a ``pull`` reads: a URL, a path, or a Hub dataset repository id."""
    hub = hub_target(text)
    if hub is not None:
        return RemoteStore(HUB_DATASETS + "/".join(filter(None, hub)))
    return open_store(text)


def _summary(report: TransferReport, target: str) -> str:
    return (f"{target}: {len(report.copied)} file(s) copied ({report.bytes_copied} bytes), {len(report.skipped)} "
            f"already there, {report.verified} verified by sha256")


def _run(action: Callable[[], str]) -> int:
    """Run one command: print its summary line and return 0, or print its error in one line and return 1."""
    try:
        message = action()
    except CacheError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(message)
    return 0


def run_push(args: argparse.Namespace) -> int:
    def push() -> str:
        source = open_store(args.directory)
        if not source.is_local:
            raise TransferError(f"{args.directory}: push copies a local cache; give its directory")
        hub = hub_target(args.target)
        if hub is not None:
            from cache_schema.hub import push_to_repo

            report = push_to_repo(source, hub[0], path_in_repo=hub[1], private=args.private or None,
                                  revision=args.revision)
        else:
            report = copy_cache(source, open_store(args.target), verify=not args.no_verify)
        return _summary(report, args.target)

    return _run(push)


def run_pull(args: argparse.Namespace) -> int:
    def pull() -> str:
        target = open_store(args.directory)
        if not target.is_local:
            raise TransferError(f"{args.directory}: pull copies into a local directory; use push between stores")
        return _summary(copy_cache(source_store(args.source), target, verify=not args.no_verify), args.directory)

    return _run(pull)


def run_relayout(args: argparse.Namespace) -> int:
    def relayout() -> str:
        moved = CacheDirectory(args.directory).relayout()
        return (f"{args.directory}: {len(moved)} shard(s) moved under data/" if moved else
                f"{args.directory}: already in the current layout (card rewritten)")

    return _run(relayout)


def register_transfer_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``push``, ``pull`` and ``relayout`` to ``subparsers`` (each sets ``func``)."""
    push = subparsers.add_parser(
        "push", help="copy a finished cache to a Hub dataset repo or any URL (resumable, verified, manifest last)")
    push.add_argument("directory", help="the local cache directory")
    push.add_argument("target", help="owner/name or hf://datasets/owner/name[/path] (a Hub dataset repo), or any "
                                     "URL or directory: s3://bucket/prefix, gs://..., file:///..., ./dir")
    push.add_argument("--private", action="store_true", help="create the Hub repository as private")
    push.add_argument("--revision", default=None, help="Hub branch to push to (default: main)")
    push.add_argument("--no-verify", action="store_true",
                      help="skip reading every file back to check its sha256 (URL targets; the Hub's own hashes "
                           "are always checked)")
    push.set_defaults(func=run_push)

    pull = subparsers.add_parser("pull", help="copy a cache from a URL or Hub dataset repo to a local directory")
    pull.add_argument("source", help="s3://..., gs://..., hf://datasets/owner/name[/path], owner/name, a path")
    pull.add_argument("directory", help="the local directory to copy into (resumed if it holds a partial copy)")
    pull.add_argument("--no-verify", action="store_true", help="skip the sha256 check of every copied file")
    pull.set_defaults(func=run_pull)

    relayout = subparsers.add_parser(
        "relayout", help="move a cache of the earlier layout (shards at the top) under data/ and write its card")
    relayout.add_argument("directory", help="the cache directory or URL")
    relayout.set_defaults(func=run_relayout)

