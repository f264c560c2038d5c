"""The cache stream as a ``torch.utils.data.IterableDataset``: DataLoader workers read, decode and collate
micro-batches ahead of the training thread.

Order is the stream's, exactly: with ``W`` workers, worker ``w`` collates micro-batches ``w, w + W, …`` of
the stream (it walks the same order and skips the others' rows without reading them), and the DataLoader
hands them out round-robin, which restores the stream's sequence. Every item is ``(batch, cursor just past
it)``, so the cursor of the last batch the training thread consumed is the resume point whatever the
workers have read ahead; :meth:`CacheBatches.state_dict` / :meth:`load_state_dict` hold that cursor for
code that checkpoints the dataset itself (torchdata's ``StatefulDataLoader`` convention).

Workers are forked processes: the reader's background read-ahead threads do not survive a fork, so each
worker starts its own (:meth:`cache_schema.reader.CacheReader.after_fork`). A cache on an object store is
read on the training process (fsspec's async filesystems are not fork-safe), by the reader's read-ahead
threads.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from stages.train.collate import Batch
from stages.train.data import CacheStream
from stages.train.order import DataCursor

logger = logging.getLogger(__name__)


def _as_is(item: Any) -> Any:
    """The DataLoader's collate_fn: items are already collated micro-batches."""
    return item


class _WorkerFailure:
    """An exception raised in a worker, sent as an item so the training process re-raises it as it was (the
    DataLoader would re-raise a copy with the worker's traceback pasted into its message)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class CacheBatches(IterableDataset):
    """(micro-batch, cursor past it) pairs of ``stream`` from ``cursor`` to the end of epoch ``epochs - 1``."""

    def __init__(self, stream: CacheStream, cursor: DataCursor, *, epochs: int) -> None:
        super().__init__()
        self.stream = stream
        self.cursor = cursor
        self.epochs = epochs

    def state_dict(self) -> dict[str, Any]:
        """The resume point: the cursor this dataset starts from (the trainer sets it from each consumed batch)."""
        return {"cursor": self.cursor.to_json()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        cursor = DataCursor.from_json(state["cursor"])
        self.stream.check_cursor(cursor)
        self.cursor = cursor

    def __iter__(self) -> Iterator[tuple[Batch, DataCursor]]:
        info = get_worker_info()
        if info is None:
            yield from self.stream.batches(self.cursor, epochs=self.epochs)
            return
        self.stream.reader.after_fork()
        try:
            yield from self.stream.batches(self.cursor, epochs=self.epochs, share=(info.id, info.num_workers))
        except Exception as error:  # noqa: BLE001 - every failure goes to the training process unchanged
            yield _WorkerFailure(error), None


def batch_loader(stream: CacheStream, cursor: DataCursor, *, epochs: int, workers: int,
                 prefetch: int = 2) -> Iterator[tuple[Batch, DataCursor]]:
    """The stream's (batch, cursor) pairs, read by ``workers`` DataLoader worker processes (0: on this thread),
    each keeping ``prefetch`` batches ready. Batches are not pinned: a micro-batch is a few MB, whose copy to
    the GPU is small next to a step."""
    if workers < 0:
        raise ValueError(f"data workers must be >= 0, got {workers}")
    dataset = CacheBatches(stream, cursor, epochs=epochs)
    if workers and not stream.reader.store.is_local:
        # fsspec's async filesystems (s3, gs, hf) refuse to run in a forked process; a remote cache is read
        # ahead by the reader's own threads instead, which overlap its requests with the step
        logger.info("data workers: 0 for the remote cache %s (its reader reads ahead on threads)", stream.reader.path)
        workers = 0
    if workers == 0:
        yield from dataset
        return
    context = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    loader = DataLoader(dataset, batch_size=None, collate_fn=_as_is, num_workers=workers, prefetch_factor=prefetch,
                        multiprocessing_context=context)
    for batch, next_cursor in loader:
        if isinstance(batch, _WorkerFailure):
            raise batch.error
        yield batch, next_cursor
