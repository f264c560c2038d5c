"""Training reads only what validates: the content checks of ``tide-cache validate`` on every row group a
:class:`cache_schema.reader.CacheReader` hands out, and one line naming the shard and row group when its
columns do not decode.

The checks are :mod:`cache_schema.content_checks` and :mod:`cache_schema.target_checks` (the same functions
validate runs), on the columns the run reads, plus the uniqueness of (sample_id, replica) across everything
the reader has handed out (:mod:`cache_schema.row_keys`). A failing row group is refused, never skipped: the
error stops the run. Each row group is checked once per reader, however often it is read again (the
training stream re-reads row groups under its full permutation and every epoch).
"""

from __future__ import annotations

import threading

import pyarrow as pa

from cache_schema.content_checks import Collector, GroupChecker, Problem
from cache_schema.errors import ContentError
from cache_schema.manifest import Manifest
from cache_schema.row_keys import ROW_KEY_COLUMNS, SeenKeys, check_unique_rows
from cache_schema.schemas import TRAINING_BASE_COLUMNS
from cache_schema.target_checks import TARGET_CHECKS, TARGET_KEY_COLUMN

__all__ = ["GroupGuard", "unreadable_group"]

# the columns every training read holds (GroupChecker.common checks them); a read without them trains nothing
REFUSAL = "training stops at a row group that fails a content check rather than skip its rows"


def _where(shard: str, group: int) -> str:
    return f"{shard} row group {group}"


def unreadable_group(shard: str, group: int, cache: str, exc: BaseException) -> ContentError:
    """The error for a row group whose column pages do not decode (damaged after the checksum was listed,
    or read with checksums off)."""
    return ContentError(f"{_where(shard, group)}: its columns do not decode ({type(exc).__name__}: {exc}); "
                        f"run tide-cache validate {cache}")


class GroupGuard:
    """The content checks of a cache's row groups, each run once; thread-safe (the reader's read-ahead threads
    check the row groups they read)."""

    def __init__(self, manifest: Manifest, cache: str) -> None:
        self.manifest = manifest
        self.cache = cache
        # (unit, columns read): a read of other columns (held-out validation reads sample_key alone) is
        # checked on its own columns; uniqueness once per unit, or a re-read would find its own keys
        self._checked: set[tuple[int, tuple[str, ...]]] = set()
        self._unique: set[int] = set()
        self._seen = SeenKeys()
        self._lock = threading.Lock()  # guards the seen keys and the checked units

    @property
    def checked(self) -> int:
        """Row groups checked so far (each counted once, whatever columns were read)."""
        return len({unit for unit, _ in self._checked})

    def check(self, unit: int, shard: str, group: int, table: pa.Table) -> None:
        """Raise :class:`ContentError` naming the first problem of row group ``group`` of ``shard`` (the reader's
        unit ``unit``); rows are numbered within the row group, as the training stream numbers them."""
        key = (unit, tuple(table.column_names))
        if key in self._checked or not set(TRAINING_BASE_COLUMNS).issubset(table.column_names):
            return  # a read of bookkeeping columns alone (held-out hashing reads sample_key) trains nothing
        out = Collector(shard, max_rows=1)
        try:
            checker = GroupChecker(self.manifest, table, 0, out)
            columns = checker.common()
            if checker.has(TARGET_KEY_COLUMN[self.manifest.pipeline]):
                TARGET_CHECKS[self.manifest.pipeline](checker, columns)
        except Exception as exc:  # damaged bytes can decode to arbitrary values: refuse, never crash
            raise ContentError(f"{_where(shard, group)}: could not be checked ({type(exc).__name__}: {exc}); "
                               f"{REFUSAL}; run tide-cache validate {self.cache}") from None
        with self._lock:
            if key in self._checked:  # another thread checked it meanwhile
                return
            keys = None
            if unit not in self._unique and checker.has(*ROW_KEY_COLUMNS):
                keys = check_unique_rows(checker, self._seen)
            problems = out.finish()
            if problems:
                raise ContentError(self._message(shard, group, problems))
            if keys is not None:  # only a row group that passes: a refused one read again is refused again
                self._seen.add(keys)
                self._unique.add(unit)
            self._checked.add(key)

    def _message(self, shard: str, group: int, problems: list[Problem]) -> str:
        first = problems[0]
        where = _where(shard, group) + (f" row {first.row}" if first.row is not None else "")
        field = f"{first.field}: " if first.field else ""
        more = f" (and {len(problems) - 1} more findings in this row group)" if len(problems) > 1 else ""
        return f"{where}: {field}{first.message}{more}; {REFUSAL}; run tide-cache validate {self.cache}"
