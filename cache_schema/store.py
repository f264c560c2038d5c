"""Where a cache's bytes live: a local directory or any fsspec URL, behind one small interface.

``open_store(location)`` takes a plain path, a ``file://`` URL or any URL an fsspec filesystem is registered
for (``s3://`` with ``s3fs``, ``gs://`` with ``gcsfs``, ``hf://datasets/<owner>/<name>`` with
``huggingface_hub``'s ``HfFileSystem``, ...), and returns a :class:`Store` rooted there. Every other module of
the package reads and writes cache files through a store, by names relative to its root (``manifest.json``,
``data/shard-00000-of-00004.parquet``), so nothing else knows whether the bytes are local.

Atomicity, per kind of store:

* local: a hidden temporary file next to the target, flushed, renamed over it (:mod:`cache_schema.files`);
* object stores: one ``PUT`` (or a multipart upload that is completed only once every part is in, and
  aborted on failure), so an object appears whole or not at all; large files are spooled to a local
  temporary file first and uploaded from there, never streamed half-finished into their final name.

Credentials, endpoints and other settings come from the filesystem libraries' own configuration
(``AWS_*`` variables and ``~/.aws`` for S3, ``HF_TOKEN`` for the Hub, fsspec's ``FSSPEC_<PROTOCOL>_<OPTION>``
variables for anything else), so a URL works wherever those tools work.
"""

from __future__ import annotations

import abc
import fnmatch
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa

from cache_schema.errors import StoreError
from cache_schema.files import (
    atomic_write_bytes,
    fsync_directory,
    sha256_of_file,
    sha256_of_stream,
    temp_path_for,
)

__all__ = ["LocalStore", "RemoteStore", "Store", "StoreError", "is_url", "open_store"]

REMOTE_BLOCK = 8 << 20  # bytes per request when streaming a whole remote file (hashing, downloads)
# The optional package that provides each protocol's fsspec filesystem, named in the error when it is missing.
PROTOCOL_PACKAGES = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
                     "hf": ("huggingface_hub", None)}
# Object stores and repositories: keys, not directories; an object appears whole when its upload completes.
FLAT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "hf", "az", "abfs", "abfss"})


def is_url(location: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` (a ``file://`` URL included), False for a plain path."""
    return "://" in os.fspath(location)


class Store(abc.ABC):
    """A directory of files, local or remote; every name is relative to the root and uses ``/``."""

    is_local: bool = False
    url: str  # how the root is named to users (a path or URL)
    _hash_block = REMOTE_BLOCK

    def display(self, name: str = "") -> str:
        """``name`` as a user would type it: a path or a URL."""
        return posixpath.join(self.url, name) if name else self.url

    def read_bytes(self, name: str) -> bytes:
        with self.open_input(name) as handle:
            return handle.read()

    def sha256(self, name: str) -> str:
        """Hex SHA-256 of file ``name``, streamed."""
        with self.open_input(name) as handle:
            return sha256_of_stream(handle, block=self._hash_block)

    @abc.abstractmethod
    def makedirs(self, name: str = "") -> None:
        """Create the directory ``name`` (and its parents); object stores need none."""

    @abc.abstractmethod
    def child(self, name: str) -> Store:
        """The store rooted at the sub-directory ``name``."""

    @abc.abstractmethod
    def is_file(self, name: str) -> bool:
        """Whether file ``name`` exists."""

    @abc.abstractmethod
    def exists(self) -> bool:
        """Whether the root itself exists (as a directory or, on object stores, as a prefix with objects)."""

    @abc.abstractmethod
    def size(self, name: str) -> int | None:
        """Bytes of file ``name``, None when it does not exist."""

    @abc.abstractmethod
    def glob(self, pattern: str) -> list[str]:
        """Names (relative, sorted) of the files matching a one-level pattern such as ``data/shard-*.parquet``."""

    @abc.abstractmethod
    def open_input(self, name: str, *, size: int | None = None) -> BinaryIO:
        """A seekable binary file for random-access reads (Parquet); ``size``, when known, saves a request."""

    @abc.abstractmethod
    def download(self, name: str, local_path: str | os.PathLike[str]) -> None:
        """Copy file ``name`` to a local path (overwriting it)."""

    @abc.abstractmethod
    def write_bytes(self, name: str, data: bytes) -> None:
        """Write file ``name`` so that readers see the old file or the whole new one, never a part."""

    @abc.abstractmethod
    def upload(self, local_path: str | os.PathLike[str], name: str, *, keep: bool = False) -> None:
        """Place a finished local file under ``name`` atomically (a rename or a copy locally, one upload
        remotely); the local file is consumed (moved or deleted) unless ``keep``."""

    @abc.abstractmethod
    def remove(self, name: str) -> None:
        """Delete file ``name`` if it exists."""

    @abc.abstractmethod
    def copy_within(self, source: str, target: str) -> None:
        """Copy file ``source`` to ``target`` in this store (a hard link locally where possible, a server-side
        copy on object stores), atomically at the target."""

    @abc.abstractmethod
    def spool(self, name: str) -> AbstractContextManager[Path]:
        """A local temporary path to write ``name``'s bytes to before :meth:`upload` (deleted if left over).

        Locally it lies next to the target, so the upload is a rename; remotely it lies in the system's
        temporary directory, so only one file at a time ever sits on local disk."""


class LocalStore(Store):
    """A directory on a local or shared file system."""

    is_local = True
    _hash_block = 1 << 20

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.url = os.fspath(root)

    def __repr__(self) -> str:
        return f"LocalStore({self.url!r})"

    def local_path(self, name: str = "") -> Path:
        return self.root / name if name else self.root

    def child(self, name: str) -> LocalStore:
        return LocalStore(self.root / name)

    def is_file(self, name: str) -> bool:
        return (self.root / name).is_file()

    def exists(self) -> bool:
        return self.root.is_dir()

    def size(self, name: str) -> int | None:
        try:
            return (self.root / name).stat().st_size
        except FileNotFoundError:
            return None

    def glob(self, pattern: str) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.glob(pattern) if p.is_file())

    def open_input(self, name: str, *, size: int | None = None) -> BinaryIO:
        # Arrow's own file: positional reads without the GIL, safe to share between reader threads.
        return pa.OSFile(os.fspath(self.root / name), "r")

    def sha256(self, name: str) -> str:
        return sha256_of_file(self.root / name)

    def download(self, name: str, local_path: str | os.PathLike[str]) -> None:
        shutil.copyfile(self.root / name, local_path)

    def write_bytes(self, name: str, data: bytes) -> None:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)

    def upload(self, local_path: str | os.PathLike[str], name: str, *, keep: bool = False) -> None:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        source = Path(local_path)
        if not keep and source.parent.resolve() == target.parent.resolve():
            os.replace(source, target)
        else:  # a copy, or another file system perhaps: copy next to the target, then rename
            with self.spool(name) as tmp:
                shutil.copyfile(source, tmp)
                _fsync_file(tmp)
                os.replace(tmp, target)
            if not keep:
                source.unlink(missing_ok=True)
        fsync_directory(target.parent)

    def remove(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def makedirs(self, name: str = "") -> None:
        (self.root / name).mkdir(parents=True, exist_ok=True)

    def copy_within(self, source: str, target: str) -> None:
        with self.spool(target) as tmp:
            tmp.unlink()
            try:
                os.link(self.root / source, tmp)  # same bytes, no copy; the rename below is the atomic step
            except OSError:  # no hard links here (another device, or a file system without them)
                shutil.copyfile(self.root / source, tmp)
                _fsync_file(tmp)
            os.replace(tmp, self.root / target)
        fsync_directory((self.root / target).parent)

    @contextmanager
    def spool(self, name: str) -> Iterator[Path]:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path_for(target)
        try:
            yield tmp
        finally:
            tmp.unlink(missing_ok=True)


class RemoteStore(Store):
    """A prefix in an object store or any other fsspec filesystem (``s3://``, ``gs://``, ``hf://``, ...)."""

    def __init__(self, url: str, fs: Any = None, root: str | None = None) -> None:
        self.url = url.rstrip("/")
        if fs is None:
            fs, root = _filesystem_for(self.url)
        self.fs = fs
        self.root = root.rstrip("/")
        self.protocol = self.url.split("://", 1)[0].lower()

    def __repr__(self) -> str:
        return f"RemoteStore({self.url!r})"

    def _path(self, name: str) -> str:
        return posixpath.join(self.root, name) if name else self.root

    def child(self, name: str) -> RemoteStore:
        return RemoteStore(posixpath.join(self.url, name), self.fs, self._path(name))

    def is_file(self, name: str) -> bool:
        return self.size(name) is not None

    def exists(self) -> bool:
        try:
            return bool(self.fs.exists(self.root)) and not self.fs.isfile(self.root)
        except OSError as exc:
            raise StoreError(f"{self.url}: cannot be listed ({type(exc).__name__}: {exc})") from exc

    def size(self, name: str) -> int | None:
        try:
            info = self.fs.info(self._path(name))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"{self.display(name)}: cannot be read ({type(exc).__name__}: {exc})") from exc
        if info.get("type") != "file":
            return None
        return int(info["size"])

    def glob(self, pattern: str) -> list[str]:
        folder, _, leaf = pattern.rpartition("/")
        try:
            entries = self.fs.ls(self._path(folder), detail=True)
        except FileNotFoundError:
            return []
        names = []
        for entry in entries:
            leaf_name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if entry.get("type") == "file" and fnmatch.fnmatchcase(leaf_name, leaf):
                names.append(posixpath.join(folder, leaf_name) if folder else leaf_name)
        return sorted(names)

    def open_input(self, name: str, *, size: int | None = None) -> BinaryIO:
        # No block cache: pyarrow asks for exactly the (coalesced) byte ranges it needs, one request each.
        options: dict[str, Any] = {"cache_type": "none"}
        if size is not None:
            options["size"] = size
        try:
            return self.fs.open(self._path(name), "rb", **options)
        except TypeError:  # a filesystem whose open() takes no size
            return self.fs.open(self._path(name), "rb", cache_type="none")
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StoreError(f"{self.display(name)}: cannot be opened ({type(exc).__name__}: {exc})") from exc

    def sha256(self, name: str) -> str:
        with self.fs.open(self._path(name), "rb", block_size=REMOTE_BLOCK, cache_type="readahead") as handle:
            return sha256_of_stream(handle, block=REMOTE_BLOCK)

    def download(self, name: str, local_path: str | os.PathLike[str]) -> None:
        self.fs.get_file(self._path(name), os.fspath(local_path))

    def write_bytes(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(name), data)

    def upload(self, local_path: str | os.PathLike[str], name: str, *, keep: bool = False) -> None:
        size = os.path.getsize(local_path)
        self.fs.put_file(os.fspath(local_path), self._path(name))
        if not keep:
            Path(local_path).unlink(missing_ok=True)
        self.fs.invalidate_cache(self._path(name))
        found = self.size(name)
        if found != size:
            raise StoreError(f"{self.display(name)}: uploaded {size} bytes but the store holds {found}")

    def remove(self, name: str) -> None:
        try:
            self.fs.rm_file(self._path(name))
        except FileNotFoundError:
            pass

    def makedirs(self, name: str = "") -> None:
        if self.protocol not in FLAT_PROTOCOLS:  # object stores have no directories (and makedirs there may
            self.fs.makedirs(self._path(name), exist_ok=True)  # create a bucket, which is not ours to do)

    def copy_within(self, source: str, target: str) -> None:
        self.fs.copy(self._path(source), self._path(target))

    @contextmanager
    def spool(self, name: str) -> Iterator[Path]:
        handle, path = tempfile.mkstemp(prefix=".tide-spool-", suffix="-" + name.rsplit("/", 1)[-1])
        os.close(handle)
        tmp = Path(path)
        try:
            yield tmp
        finally:
            tmp.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _filesystem_for(url: str) -> tuple[Any, str]:
    protocol = url.split("://", 1)[0].lower()
    try:
        import fsspec

        fs, root = fsspec.core.url_to_fs(url)
    except ImportError as exc:
        package, extra = PROTOCOL_PACKAGES.get(protocol, (None, None))
        hint = (f"pip install 'tide-offline[{extra}]'" if extra else f"pip install {package}") if package else \
            "install the fsspec filesystem package for it"
        raise StoreError(f"{url}: {protocol}:// locations need an optional package ({exc}); {hint}") from None
    except ValueError as exc:  # an unknown protocol
        raise StoreError(f"{url}: not a location fsspec knows ({exc}); give a path or an s3://, gs://, hf://, "
                         "file:// URL") from None
    return fs, root


def open_store(location: str | os.PathLike[str] | Store) -> Store:
    """The store at ``location``: a :class:`Store` as it is, a path or ``file://`` URL as a
    :class:`LocalStore`, any other URL as a :class:`RemoteStore` over its fsspec filesystem."""
    if isinstance(location, Store):
        return location
    text = os.fspath(location)
    if text.startswith("file://"):
        return LocalStore(text[len("file://"):])
    if is_url(text):
        return RemoteStore(text)
    return LocalStore(text)
