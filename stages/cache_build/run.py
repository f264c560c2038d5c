"""Stage one's driver: one rank's shards, asynchronous shard writing, resume, and the manifest.

One call of :func:`run_build` does the work of one rank:

1. claim the output directory (:mod:`stages.cache_build.ownership`: empty, or this build's own; ``--overwrite``
   deletes the cache files there first), resolve the settings and refuse a content change against it;
2. load or make the data survey (:mod:`stages.cache_build.survey`), which fixes the shard layout
   (:class:`stages.cache_build.shard_layout.ShardLayout`); a resumed build re-fingerprints its data, teacher
   weights and tokenizers and refuses if any changed (:mod:`stages.cache_build.input_check`);
3. for each of this rank's shards that the cache directory's journal does not list as complete
   (:meth:`cache_schema.directory.CacheDirectory.shard_is_complete`), build its rows with the teacher
   (:class:`stages.cache_build.shard_builder.ShardBuilder`) and hand them to an
   :class:`cache_schema.writer.AsyncShardWriter` (compression overlaps the next shard's teacher compute);
   a shard's journal record is written only once its file is in place;
4. wait for every rank (``accelerate``'s ``PartialState.wait_for_everyone`` when launched with several
   processes); rank 0 removes the temporary files killed writers left and writes ``manifest.json`` with the
   build statistics (:func:`finalize_build`).

Re-running the same command continues an interrupted build; the result equals an uninterrupted one
because shard content depends only on the settings and the data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cache_schema.directory import CacheDirectory
from stages.cache_build.config import BuildConfig, check_or_store_config
from stages.cache_build.exact_build import exact_info, stores_exact
from stages.cache_build.input_check import check_inputs_unchanged
from stages.cache_build.ownership import check_shard_names, claim_output
from stages.cache_build.pipelines import build_pipeline
from stages.cache_build.shard_builder import ShardBuilder, ShardStats, target_settings
from stages.cache_build.shard_layout import ShardLayout
from stages.cache_build.stats import log_summary, summarise
from stages.cache_build.survey import iter_prepared, load_or_make_survey, load_tokenizers

logger = logging.getLogger(__name__)


class BuildIncompleteError(RuntimeError):
    """Finalising was asked for while some shards of the layout are not built yet."""


@dataclass
class BuildHooks:
    """Callbacks into the driver (tests use them to interrupt a build at a chosen point).

    ``after_shard(shard_index)`` runs right after a shard's journal record is written.
    """

    after_shard: Callable[[int], None] | None = None


@dataclass
class RankInfo:
    rank: int
    world_size: int
    state: Any = None  # accelerate PartialState when this process was launched by accelerate/torchrun

    def barrier(self) -> None:
        if self.state is not None and self.world_size > 1:
            self.state.wait_for_everyone()


def run_build(
    config: BuildConfig,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    finalize: bool = True,
    hooks: BuildHooks | None = None,
) -> str | None:
    """Build (or resume) this rank's shards; rank 0 then writes the manifest when ``finalize``.

    ``rank``/``world_size`` default to what accelerate reports (a single process without a launcher).
    Passing them explicitly runs one rank of a multi-process layout without any process group — the
    caller then runs the other ranks and :func:`finalize_build` itself. Returns the manifest path when
    this call wrote it (a path or URL), else None.
    """
    wall_start = time.perf_counter()
    config = pin_dtype(config.resolve())
    info = _rank_info(rank, world_size)
    hooks = hooks or BuildHooks()
    directory = CacheDirectory(config.output)  # a path or any URL of cache_schema.store (s3://, gs://, hf://)
    claim_output(directory, overwrite=config.overwrite, may_delete=info.rank == 0)
    if config.overwrite:
        info.barrier()  # every rank starts once the first has deleted the old files
    directory.refuse_legacy_layout()
    check_or_store_config(config, directory)
    student_tok, teacher_tok = load_tokenizers(config)
    resuming = directory.read_survey() is not None
    survey = load_or_make_survey(config, student_tok, teacher_tok)
    if resuming:
        check_inputs_unchanged(config, survey, student_tok, teacher_tok)
    layout = ShardLayout(survey["num_samples"], config.replicas, config.rows_per_shard)
    check_shard_names(directory, layout.shard_files())
    mine = layout.shards_for_rank(info.rank, info.world_size)
    todo = [s for s in mine if not directory.shard_is_complete(s, layout.shard_file(s))]
    logger.info(
        "rank %d/%d: %d of its %d shards to build (%d shards, %d rows in total)",
        info.rank, info.world_size, len(todo), len(mine), layout.num_shards, layout.num_units,
    )
    if todo:
        builder = ShardBuilder(config, survey, _resolve_device(config, info))
        _build_shards(config, directory, layout, todo, builder, student_tok, teacher_tok, hooks, info,
                      build_facts(config, survey))
    logger.info("rank %d finished its shards in %.1f s", info.rank, time.perf_counter() - wall_start)
    info.barrier()
    if finalize and info.rank == 0:
        return finalize_build(config)
    return None


def finalize_build(config: BuildConfig) -> str:
    """Write ``manifest.json`` once every shard of the layout has its journal record; return where it went.

    Raises :class:`BuildIncompleteError` naming the missing shards if the build is not complete.
    """
    from cache_schema.manifest import Manifest, NoiseInfo, ShardInfo, StudentInfo, TeacherInfo
    from tide.noise import GENERATOR_NAME

    config = pin_dtype(config.resolve())
    directory = CacheDirectory(config.output)
    check_or_store_config(config, directory)
    survey = directory.read_survey()
    if survey is None:
        raise BuildIncompleteError(f"{directory.root}: no {directory.survey_name}; run the build before finalising it")
    layout = ShardLayout(survey["num_samples"], config.replicas, config.rows_per_shard)
    pipeline = build_pipeline(config.pipeline)
    records, missing = directory.finished_records(layout.shard_files())
    if missing:
        raise BuildIncompleteError(
            f"{directory.root}: {len(missing)} of {layout.num_shards} shards are not built yet (first: {missing[:10]}); "
            "run the remaining ranks (or rerun the build command) before finalising"
        )
    for leftover in directory.temp_files():  # every rank is done: no writer is running any more
        logger.info("removing %s, left by a killed writer", leftover)
        directory.store.remove(leftover)
    stats = summarise(survey, records)
    targets = pipeline.targets_info(target_settings(config, survey))
    if stores_exact(config.targets):
        targets.exact = exact_info(directory, config.hidden_encoding)  # the head file's size and SHA-256
    manifest = Manifest(
        pipeline=config.pipeline,
        teacher=TeacherInfo(**survey["teacher"]),
        student=StudentInfo(**survey["student"]),
        teacher_tokenizer_fingerprint=survey["teacher_tokenizer_fingerprint"],
        targets=targets,
        noise=NoiseInfo(
            seed=config.seed,
            replicas=config.replicas,
            eps=config.eps,
            schedule="linear",
            demo_ratio=config.demo_ratio,
            chunk_consistent=pipeline.chunk_consistent,
            generator=GENERATOR_NAME,
        ),
        build={"config": json.loads(config.to_json()), "versions": survey["versions"], "stats": stats},
        shards=[ShardInfo(**record["info"]) for record in records],
    )
    path = directory.write_manifest(manifest)
    log_summary(stats)
    return path


# ---------------------------------------------------------------------------------------------- setup


def _rank_info(rank: int | None, world_size: int | None) -> RankInfo:
    if rank is not None or world_size is not None:
        if rank is None or world_size is None:
            raise ValueError("pass both rank and world_size, or neither")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
        return RankInfo(rank, world_size)
    from accelerate import PartialState

    state = PartialState()
    return RankInfo(state.process_index, state.num_processes, state)


def _resolve_device(config: BuildConfig, info: RankInfo) -> Any:
    from tide.runtime import resolve_device

    if config.device == "auto" and info.state is not None:
        return info.state.device
    return resolve_device(config.device)


def pin_dtype(config: BuildConfig) -> BuildConfig:
    """Replace ``dtype: auto`` by the dtype it means on this machine (bf16 on CUDA, fp32 otherwise), so the
    stored config records it and resuming on another device type is refused instead of mixing precisions."""
    if config.dtype != "auto":
        return config
    from tide.runtime import default_dtype, dtype_name, resolve_device

    device = resolve_device("auto") if config.device == "auto" else config.device
    return dataclasses.replace(config, dtype=dtype_name(default_dtype(device)))


# ---------------------------------------------------------------------------------------------- shards


def build_facts(config: BuildConfig, survey: dict[str, Any]) -> dict[str, Any]:
    """The manifest facts every shard records (:mod:`cache_schema.shard_facts`), from the sources
    :func:`finalize_build` writes the manifest from, so the two agree."""
    from cache_schema.manifest import StudentInfo, TeacherInfo
    from cache_schema.shard_facts import shard_facts

    targets = build_pipeline(config.pipeline).targets_info(target_settings(config, survey))
    return shard_facts(config.pipeline, targets, TeacherInfo(**survey["teacher"]), StudentInfo(**survey["student"]))


def _distinct_samples(layout: ShardLayout, shards: list[int]) -> int:
    total, last = 0, -1
    for shard in sorted(shards):
        samples = layout.shard_samples(shard)
        total += len(samples) - (1 if samples.start == last else 0)
        last = samples.stop - 1
    return total


def _build_shards(
    config: BuildConfig,
    directory: CacheDirectory,
    layout: ShardLayout,
    todo: list[int],
    builder: ShardBuilder,
    student_tok: Any,
    teacher_tok: Any,
    hooks: BuildHooks,
    info: RankInfo,
    facts: dict[str, Any],
) -> None:
    from tqdm.auto import tqdm

    from cache_schema.directory import shard_entry
    from cache_schema.writer import AsyncShardWriter

    for shard in todo:
        directory.forget_shard(shard, layout.shard_file(shard))
    todo_set = set(todo)
    expected = {shard: len(layout.shard_units(shard)) for shard in todo}
    last_sample = max(layout.shard_samples(shard).stop for shard in todo)
    pending: dict[int, list[tuple[Any, int]]] = {}
    submitted: list[tuple[int, ShardStats]] = []
    recorded = 0
    writer = AsyncShardWriter(
        directory.store, schema=builder.pipeline.schema(builder.targets), row_group_rows=config.rows_per_row_group,
        overwrite=True, max_pending=2, facts=facts,
    )

    def record_written() -> None:
        nonlocal recorded
        written = writer.infos
        while recorded < len(written):
            shard, stats = submitted[recorded]
            directory.write_record(shard, written[recorded], stats.as_dict())
            recorded += 1
            if hooks.after_shard is not None:
                hooks.after_shard(shard)

    bar = tqdm(
        total=_distinct_samples(layout, todo), unit="sample", desc=f"build rank {info.rank}",
        disable=not config.progress, dynamic_ncols=True,
    )
    try:
        for index, sample in enumerate(iter_prepared(config, student_tok, teacher_tok)):
            if index >= last_sample:
                break
            wanted = [(shard, r) for shard, r in layout.shard_units_of_sample(index) if shard in todo_set]
            for shard, replica in wanted:
                pending.setdefault(shard, []).append((sample, replica))
            if wanted:
                bar.update(1)
            for shard in sorted(s for s, units in pending.items() if len(units) == expected[s]):
                rows, stats = builder.build(pending.pop(shard), shard=layout.shard_file(shard))
                submitted.append((shard, stats))
                writer.submit(shard_entry(layout.shard_file(shard)), rows)
                record_written()
        if pending:
            raise RuntimeError(
                f"the data yielded fewer samples than the survey ({layout.num_samples}); shards {sorted(pending)} "
                f"are incomplete — did the sources change since {directory.survey_path} was written?"
            )
        writer.close()
        record_written()
    except BaseException:
        try:
            writer.close()
        except Exception:  # the first failure is the one to report
            logger.exception("closing the shard writer after a failure also failed")
        raise
    finally:
        bar.close()
