"""Training data over a cache: row-group streaming, deterministic per-epoch order, rank split, collation.

:class:`CacheStream` yields this process's micro-batches from a :class:`cache_schema.reader.CacheReader`:
each epoch keeps the rows of one replica (``epoch mod R`` unless a cycle is configured), orders them with
:func:`stages.train.order.epoch_order` (a pure function of seed, epoch and replica: by default a full
permutation of the epoch's rows) and deals every global batch of ``batch_size * world_size`` rows
round-robin to the ranks. Row groups are read on demand and kept in a small LRU cache, so memory holds a
few row groups, never the cache; under the full permutation nearly every row comes from another row
group, so each row costs one row-group read (small row groups, ``--rows-per-row-group`` at build time,
keep that cheap; ``shuffle_window >= 1`` reads a few row groups at a time instead). Every yielded batch
comes with the :class:`DataCursor` that points just past it; saving that cursor and passing it back
resumes the exact order mid-epoch. An epoch that trains on a replica an earlier epoch used (more epochs
than replicas) replays that noise; the stream warns once when that happens.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from cache_schema.reader import CacheReader, table_to_numpy
from stages.train.collate import Batch, CollateSpec, collate_rows
from stages.train.order import (
    DataCursor,
    epoch_order,
    first_replayed_epoch,
    global_batch_rows,
    rank_slice,
    replica_for_epoch,
    steps_in_epoch,
)
from stages.train.pipelines import BASE_COLUMNS, TrainPipeline

logger = logging.getLogger(__name__)

_FULL_ORDER_CACHED_GROUPS = 4  # row groups kept decoded under the full permutation (hits are rare anyway)


def columns_for(pipeline: TrainPipeline | None, target_pass: str) -> list[str]:
    """Cache columns a training run reads: the base columns plus ``pipeline``'s target columns of
    ``target_pass`` (None: a run without teacher targets)."""
    columns = list(BASE_COLUMNS)
    if pipeline is not None:
        columns += pipeline.columns(target_pass)
    return columns


@dataclass(frozen=True)
class StreamConfig:
    """Order and split of the data: see :mod:`stages.train.order`."""

    seed: int = 0
    batch_size: int = 8
    rank: int = 0
    world_size: int = 1
    shuffle_window: int = 0  # 0: a full permutation of the epoch's rows; N >= 1: windows of N row groups
    replica_cycle: tuple[int, ...] = ()
    shuffle: bool = True


class _RowGroup:
    """One row group's columns as numpy arrays (:func:`cache_schema.reader.table_to_numpy`, no copies), with
    per-row access by views.

    List columns are kept as (flat values, offsets as a Python list): a row is one slice, so a row costs a
    few microseconds whatever its length (a tensor's ``int(offsets[i])`` is ten times that)."""

    def __init__(self, columns: dict) -> None:
        self.columns: dict[str, object] = {}
        for name, column in columns.items():
            if isinstance(column, tuple):
                self.columns[name] = (column[0], column[1].tolist())
            elif isinstance(column, list):
                self.columns[name] = column
            else:
                self.columns[name] = column.tolist()  # scalars: Python values, as rows hold them

    def row(self, index: int) -> dict[str, object]:
        out: dict[str, object] = {}
        for name, column in self.columns.items():
            if isinstance(column, tuple):
                values, offsets = column
                out[name] = values[offsets[index]:offsets[index + 1]]
            else:
                out[name] = column[index]
        return out


class CacheStream:
    """This rank's micro-batches over a cache, epoch after epoch, resumable from a :class:`DataCursor`."""

    def __init__(
        self,
        reader: CacheReader,
        collate_spec: CollateSpec,
        columns: Sequence[str],
        config: StreamConfig,
    ) -> None:
        if not 0 <= config.rank < config.world_size:
            raise ValueError(f"rank {config.rank} is outside 0..{config.world_size - 1}")
        if config.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {config.batch_size}")
        self.reader = reader
        self.spec = collate_spec
        self.columns = list(columns)
        self.config = config
        self.num_replicas = reader.manifest.noise.replicas
        self._replicas = reader.unit_column("replica")  # one small column per row group; no shard hashed yet
        for unit, values in enumerate(self._replicas):
            bad = values[(values < 0) | (values >= self.num_replicas)]
            if len(bad):
                raise ValueError(
                    f"{reader.path}: row group {unit} holds replica {int(bad[0])}, outside the manifest's "
                    f"0..{self.num_replicas - 1}"
                )
        self._cache: OrderedDict[int, _RowGroup] = OrderedDict()
        self._cache_size = (config.shuffle_window or _FULL_ORDER_CACHED_GROUPS) + 1
        self._orders: dict[int, np.ndarray] = {}
        self._warned_replay = False

    # --- order --------------------------------------------------------------------------------------------

    def replica(self, epoch: int) -> int:
        return replica_for_epoch(epoch, self.num_replicas, self.config.replica_cycle)

    def order(self, epoch: int) -> np.ndarray:
        """The global row order of ``epoch``, (N, 2) of (row-group unit, row)."""
        if epoch not in self._orders:
            self._orders = {
                epoch: epoch_order(
                    self._replicas, seed=self.config.seed, epoch=epoch, replica=self.replica(epoch),
                    window=self.config.shuffle_window, shuffle=self.config.shuffle,
                )
            }
        return self._orders[epoch]

    def steps_per_epoch(self, epoch: int) -> int:
        """Micro-batches per rank in ``epoch`` (equal on every rank)."""
        return steps_in_epoch(len(self.order(epoch)), self.config.batch_size, self.config.world_size)

    def rows_of_replica(self, replica: int) -> int:
        return int(sum(int((values == replica).sum()) for values in self._replicas))

    def micro_batches_per_epoch(self, epoch: int) -> int:
        """Like :meth:`steps_per_epoch` without building the order (counts rows of the epoch's replica)."""
        rows = self.rows_of_replica(self.replica(epoch))
        return steps_in_epoch(rows, self.config.batch_size, self.config.world_size)

    def start_cursor(self, epoch: int = 0) -> DataCursor:
        return DataCursor(epoch=epoch, position=0, seed=self.config.seed, replica=self.replica(epoch))

    def check_cursor(self, cursor: DataCursor) -> None:
        """Refuse a cursor saved with another seed or replica schedule than this stream's."""
        if cursor.seed != self.config.seed:
            raise ValueError(
                f"data cursor was saved with seed {cursor.seed} but this run uses seed {self.config.seed}; "
                "resume with the original --seed"
            )
        if cursor.replica != self.replica(cursor.epoch):
            raise ValueError(
                f"data cursor says epoch {cursor.epoch} trains replica {cursor.replica} but this run's "
                f"schedule gives replica {self.replica(cursor.epoch)}; resume with the original --replica_cycle"
            )
        if cursor.position > len(self.order(cursor.epoch)):
            raise ValueError(
                f"data cursor position {cursor.position} is past the {len(self.order(cursor.epoch))} rows "
                f"of epoch {cursor.epoch}; the cache differs from the one the checkpoint was trained on"
            )

    # --- reading ------------------------------------------------------------------------------------------

    def _row_group(self, unit: int) -> _RowGroup:
        group = self._cache.get(unit)
        if group is not None:
            self._cache.move_to_end(unit)
            return group
        group = _RowGroup(table_to_numpy(self.reader.read_row_group(unit, self.columns)))
        self._cache[unit] = group
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return group

    def _read_ahead(self, pairs: np.ndarray) -> None:
        """Start reading the row groups of this batch and the next that are not decoded yet (the reader's
        background threads: on a remote cache the requests overlap each other and this batch's step)."""
        units = dict.fromkeys(int(unit) for unit in pairs[:, 0]) if len(pairs) else {}
        self.reader.prefetch([u for u in units if u not in self._cache], self.columns)

    def rows(self, pairs: np.ndarray) -> list[dict[str, object]]:
        """Rows for (unit, row) pairs, in the given order."""
        return [self._row_group(int(unit)).row(int(row)) for unit, row in pairs]

    def provenance(self, pairs: np.ndarray) -> tuple[str, ...]:
        """``shard-….parquet row group G row R`` for (unit, row) pairs."""
        units = self.reader.units
        return tuple(f"{units[int(u)].shard} row group {units[int(u)].row_group} row {int(r)}" for u, r in pairs)

    def warn_if_replayed(self, epoch: int) -> None:
        """Log once when ``epoch`` trains on a replica an earlier epoch used (the same t, mask and split)."""
        if self._warned_replay or epoch < first_replayed_epoch(self.num_replicas, self.config.replica_cycle):
            return
        self._warned_replay = True
        logger.warning(
            "epoch %d trains on replica %d again: the cache holds %d noise replica(s), so from here on every "
            "epoch replays the timesteps, masks and CompDemo splits of an earlier one (the original drew fresh "
            "noise every step; build with --replicas >= the number of epochs to match it)",
            epoch, self.replica(epoch), self.num_replicas,
        )

    def batches(self, cursor: DataCursor, *, epochs: int, share: tuple[int, int] = (0, 1)
                ) -> Iterator[tuple[Batch, DataCursor]]:
        """Yield (this rank's batch, cursor just past it) from ``cursor`` to the end of epoch ``epochs - 1``.

        ``share = (w, W)``: only micro-batches ``w, w + W, …`` of that sequence (one DataLoader worker's
        share, :mod:`stages.train.loader`); the others' rows are not read."""
        self.check_cursor(cursor)
        worker, workers = share
        if not 0 <= worker < workers:
            raise ValueError(f"share {share} must be (w, W) with 0 <= w < W")
        epoch, position = cursor.epoch, cursor.position
        cfg = self.config
        index = 0
        while epoch < epochs:
            self.warn_if_replayed(epoch)
            order = self.order(epoch)
            consumed = global_batch_rows(order, position, cfg.batch_size, cfg.world_size)
            if consumed == 0:
                epoch, position = epoch + 1, 0
                continue
            if index % workers == worker:
                mine = rank_slice(order, position, cfg.batch_size, cfg.rank, cfg.world_size)
                ahead = position + consumed * workers  # this share's next micro-batch (same size, or fewer rows)
                upcoming = rank_slice(order, ahead, cfg.batch_size, cfg.rank, cfg.world_size)
                self._read_ahead(np.concatenate([mine, upcoming]))
                batch = collate_rows(self.rows(mine), self.spec)
                batch.provenance = self.provenance(mine)
                cursor = DataCursor(epoch=epoch, position=position + consumed, seed=cfg.seed,
                                    replica=self.replica(epoch))
                yield batch, cursor
            position += consumed
            index += 1
