"""The shard layout of a build: work units → shards → ranks, a pure function of the configuration.

A work unit is one (sample index, replica) pair, where the sample index counts the samples that survive
data preparation, in source order. Units are numbered sample-major, ``unit = sample * replicas + replica``
(so all replicas of a sample sit next to each other and each sample is prepared once), and shard ``s``
holds units ``[s * rows_per_shard, (s + 1) * rows_per_shard)``. Shards go to ranks round-robin
(``s % world_size``). Shard content therefore depends only on the configuration and the data, never on
how many processes build it.
"""

from __future__ import annotations

from dataclasses import dataclass

from cache_schema.directory import shard_file_name


@dataclass(frozen=True)
class ShardLayout:
    """Deterministic layout of a build of ``num_samples`` prepared samples × ``replicas``."""

    num_samples: int
    replicas: int
    rows_per_shard: int

    def __post_init__(self) -> None:
        if self.num_samples < 0:
            raise ValueError(f"num_samples={self.num_samples}: must be non-negative")
        if self.replicas < 1:
            raise ValueError(f"replicas={self.replicas}: must be at least 1")
        if self.rows_per_shard < 1:
            raise ValueError(f"rows_per_shard={self.rows_per_shard}: must be at least 1")

    @property
    def num_units(self) -> int:
        return self.num_samples * self.replicas

    @property
    def num_shards(self) -> int:
        return -(-self.num_units // self.rows_per_shard)

    def unit(self, index: int) -> tuple[int, int]:
        """(sample index, replica) of unit ``index``."""
        self._check_unit(index)
        return divmod(index, self.replicas)

    def unit_index(self, sample: int, replica: int) -> int:
        if not 0 <= sample < self.num_samples:
            raise ValueError(f"sample={sample}: outside [0, {self.num_samples})")
        if not 0 <= replica < self.replicas:
            raise ValueError(f"replica={replica}: outside [0, {self.replicas})")
        return sample * self.replicas + replica

    def shard_of_unit(self, index: int) -> int:
        self._check_unit(index)
        return index // self.rows_per_shard

    def shard_units(self, shard: int) -> range:
        """Unit indices of ``shard``, in row order."""
        self._check_shard(shard)
        start = shard * self.rows_per_shard
        return range(start, min(start + self.rows_per_shard, self.num_units))

    def shard_samples(self, shard: int) -> range:
        """Sample indices with at least one unit in ``shard``."""
        units = self.shard_units(shard)
        return range(units.start // self.replicas, (units.stop - 1) // self.replicas + 1)

    def shard_units_of_sample(self, sample: int) -> list[tuple[int, int]]:
        """(shard, replica) for every replica of ``sample``."""
        return [(self.shard_of_unit(self.unit_index(sample, r)), r) for r in range(self.replicas)]

    def shards_for_rank(self, rank: int, world_size: int) -> list[int]:
        """Shards written by ``rank`` of ``world_size`` (round-robin)."""
        if world_size < 1:
            raise ValueError(f"world_size={world_size}: must be at least 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank}: outside [0, {world_size})")
        return list(range(rank, self.num_shards, world_size))

    def shard_file(self, shard: int) -> str:
        """File name of ``shard``: ``shard-00003-of-00010.parquet``."""
        self._check_shard(shard)
        return shard_file_name(shard, self.num_shards)

    def shard_files(self) -> list[str]:
        """File names of every shard, in shard order."""
        return [self.shard_file(shard) for shard in range(self.num_shards)]

    def _check_unit(self, index: int) -> None:
        if not 0 <= index < self.num_units:
            raise ValueError(f"unit={index}: outside [0, {self.num_units})")

    def _check_shard(self, shard: int) -> None:
        if not 0 <= shard < self.num_shards:
            raise ValueError(f"shard={shard}: outside [0, {self.num_shards})")
