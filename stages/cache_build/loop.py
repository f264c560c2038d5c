"""The stage-one build loop: plan, teacher passes per shard, asynchronous shard writing, resume, manifest.

One call of :func:`run_build` does the work of one rank:

1. resolve the configuration and refuse a content change against an existing output directory
   (``build_config.json``);
2. make or load the plan (``progress/plan.json``): one counting pass over the prepared data gives the
   number of samples, the skip counts and the alignment yield, and fixes the shard layout
   (:class:`stages.cache_build.plan.BuildPlan`);
3. for each shard of this rank that is not complete — complete means the file is present and its
   sha256 and size equal its ``progress/`` record, which is written atomically only after the shard is in
   place — draw the noise of its units, pack the teacher forwards by length, run the teacher, assemble
   rows and hand them to an :class:`cache_schema.writer.AsyncShardWriter` (compression overlaps the next
   shard's teacher compute);
4. wait for every rank (``accelerate``'s ``PartialState.wait_for_everyone`` when launched with several
   processes); rank 0 writes ``manifest.json`` with the build statistics (:func:`finalize_build`).

Re-running the same command continues an interrupted build; the result equals an uninterrupted one
because shard content depends only on the configuration and the data.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cache_schema.files import atomic_write_text
from stages.cache_build.config import BuildConfig, BuildConfigError, check_or_store_config
from stages.cache_build.passes import (
    PLAIN,
    build_requests,
    draw_unit_noise,
    forward_cost_factor,
    pack_batches,
    pass_kinds,
    run_teacher_batch,
)
from stages.cache_build.plan import BuildPlan
from stages.cache_build.rows import cross_row, shared_row

logger = logging.getLogger(__name__)

PROGRESS_DIR = "progress"
PLAN_FILE = "plan.json"
PLAN_FORMAT = 1


class BuildIncompleteError(RuntimeError):
    """Finalising was asked for while some shards of the plan are not built yet."""


@dataclass
class BuildHooks:
    """Callbacks into the loop (tests use them to interrupt a build at a chosen point).

    ``after_shard(shard_index)`` runs right after a shard's progress record is written.
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


@dataclass
class ShardStats:
    """Per-shard counters stored in the shard's progress record and summed into the manifest."""

    rows: int = 0
    masked_positions: int = 0
    targets: int = 0
    tail_mass_sum: float = 0.0
    tail_count: int = 0
    teacher_forwards: int = 0
    teacher_batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    teacher_seconds: float = 0.0
    shard_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ---------------------------------------------------------------------------------------------- entry points


def run_build(
    config: BuildConfig,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    finalize: bool = True,
    hooks: BuildHooks | None = None,
) -> Path | None:
    """Build (or resume) this rank's shards; rank 0 then writes the manifest when ``finalize``.

    ``rank``/``world_size`` default to what accelerate reports (a single process without a launcher).
    Passing them explicitly runs one rank of a multi-process layout without any process group — the
    caller then runs the other ranks and :func:`finalize_build` itself. Returns the manifest path when
    this call wrote it, else None.
    """
    wall_start = time.perf_counter()
    config = _pin_dtype(config.resolve())
    info = _rank_info(rank, world_size)
    hooks = hooks or BuildHooks()
    output = Path(config.output)
    check_or_store_config(config, output)
    student_tok, teacher_tok = load_tokenizers(config)
    plan_info = load_or_make_plan(config, student_tok, teacher_tok)
    plan = BuildPlan(plan_info["num_samples"], config.replicas, config.rows_per_shard)
    mine = plan.shards_for_rank(info.rank, info.world_size)
    todo = [s for s in mine if not shard_is_complete(output, plan, s)]
    logger.info(
        "rank %d/%d: %d of its %d shards to build (%d shards, %d rows in total)",
        info.rank, info.world_size, len(todo), len(mine), plan.num_shards, plan.num_units,
    )
    if todo:
        builder = ShardBuilder(config, plan_info, _resolve_device(config, info))
        _build_shards(config, plan, todo, builder, student_tok, teacher_tok, hooks, info)
    logger.info("rank %d finished its shards in %.1f s", info.rank, time.perf_counter() - wall_start)
    info.barrier()
    if finalize and info.rank == 0:
        return finalize_build(config)
    return None


def finalize_build(config: BuildConfig) -> Path:
    """Write ``manifest.json`` once every shard of the plan has its progress record; return its path.

    Raises :class:`BuildIncompleteError` naming the missing shards (and the rank that owns them for the
    given layout) if the build is not complete.
    """
    from cache_schema.manifest import Manifest, NoiseInfo, StudentInfo, TargetsInfo, TeacherInfo
    from cache_schema.writer import write_manifest
    from tide.noise import GENERATOR_NAME

    config = _pin_dtype(config.resolve())
    output = Path(config.output)
    check_or_store_config(config, output)
    plan_path = output / PROGRESS_DIR / PLAN_FILE
    if not plan_path.is_file():
        raise BuildIncompleteError(f"{output}: no {PROGRESS_DIR}/{PLAN_FILE}; run the build before finalising it")
    plan_info = json.loads(plan_path.read_text(encoding="utf-8"))
    plan = BuildPlan(plan_info["num_samples"], config.replicas, config.rows_per_shard)
    records, missing = [], []
    for shard in range(plan.num_shards):
        record = read_shard_record(output, plan, shard)
        path = output / plan.shard_file(shard)
        if record is None or not path.is_file() or path.stat().st_size != record["info"]["bytes"]:
            missing.append(shard)
        else:
            records.append(record)
    if missing:
        raise BuildIncompleteError(
            f"{output}: {len(missing)} of {plan.num_shards} shards are not built yet (first: {missing[:10]}); "
            "run the remaining ranks (or rerun the build command) before finalising"
        )
    from cache_schema.manifest import ShardInfo

    stats = summarise(plan_info, records)
    manifest = Manifest(
        pipeline=config.pipeline,
        teacher=TeacherInfo(**plan_info["teacher"]),
        student=StudentInfo(**plan_info["student"]),
        teacher_tokenizer_fingerprint=plan_info["teacher_tokenizer_fingerprint"],
        targets=TargetsInfo(
            passes=list(config.passes),
            value_dtype=config.value_dtype,
            temperatures=list(config.temperatures),
            k=config.k if config.pipeline == "shared" else None,
        ),
        noise=NoiseInfo(
            seed=config.seed,
            replicas=config.replicas,
            eps=config.eps,
            schedule="linear",
            demo_ratio=config.demo_ratio,
            chunk_consistent=config.pipeline == "cross",
            generator=GENERATOR_NAME,
        ),
        build={
            "config": json.loads(config.to_json()),
            "versions": plan_info["versions"],
            "stats": stats,
        },
        shards=[ShardInfo(**record["info"]) for record in records],
    )
    path = write_manifest(output, manifest)
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


def _pin_dtype(config: BuildConfig) -> BuildConfig:
    """Replace ``dtype: auto`` by the dtype it means on this machine (bf16 on CUDA, fp32 otherwise), so the
    stored config records it and resuming on another device type is refused instead of mixing precisions."""
    if config.dtype != "auto":
        return config
    from tide.runtime import default_dtype, dtype_name, resolve_device

    device = resolve_device("auto") if config.device == "auto" else config.device
    return dataclasses.replace(config, dtype=dtype_name(default_dtype(device)))


_TOKENIZERS: dict[tuple[str, float], Any] = {}


def _load_tokenizer(path: str) -> Any:
    """A tokenizer directory, loaded once per process (keyed by path and file times): the alignment's
    per-tokenizer byte tables are cached on the tokenizer object, so reusing it saves their rebuild."""
    from transformers import AutoTokenizer

    directory = Path(path)
    stamp = max((f.stat().st_mtime for f in directory.glob("tokenizer*")), default=0.0) if directory.is_dir() else 0.0
    key = (str(directory.resolve()) if directory.exists() else path, stamp)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    return _TOKENIZERS[key]


def load_tokenizers(config: BuildConfig) -> tuple[Any, Any]:
    """(student tokenizer, teacher tokenizer) from their directories."""
    return _load_tokenizer(config.student_tokenizer), _load_tokenizer(config.teacher_tokenizer)


def iter_prepared(config: BuildConfig, student_tok: Any, teacher_tok: Any, skip_counter: Any = None,
                  stats: Any = None) -> Iterator[Any]:
    """Prepared samples of the configured sources, in source order, at most ``max_samples``."""
    from stages.cache_build.preparation import prepare_samples
    from stages.cache_build.sources import iter_sources

    prepared = prepare_samples(
        iter_sources(config.sources, skip_counter),
        student_tok,
        teacher_tok,
        pipeline=config.pipeline,
        block_size=config.block_size,
        max_length=config.max_length,
        teacher_max_length=config.teacher_max_length,
        skip_counter=skip_counter,
        stats=stats,
    )
    if config.max_samples is not None:
        prepared = itertools.islice(prepared, config.max_samples)
    yield from prepared


def load_or_make_plan(config: BuildConfig, student_tok: Any, teacher_tok: Any) -> dict[str, Any]:
    """The plan record of the output directory, made by a counting pass over the data if missing.

    Every rank that finds no plan makes the same one (it is a pure function of the configuration and the
    data) and writes it atomically, so no rank waits for another here.
    """
    path = Path(config.output) / PROGRESS_DIR / PLAN_FILE
    if path.is_file():
        plan_info = json.loads(path.read_text(encoding="utf-8"))
        if plan_info.get("plan_format") != PLAN_FORMAT:
            raise BuildConfigError(f"{path}: plan format {plan_info.get('plan_format')!r} is not {PLAN_FORMAT}")
        return plan_info
    from stages.cache_build.preparation import PrepStats
    from stages.cache_build.skips import SkipCounter

    start = time.perf_counter()
    skip_counter, prep_stats = SkipCounter(), PrepStats()
    num_samples = sum(1 for _ in iter_prepared(config, student_tok, teacher_tok, skip_counter, prep_stats))
    logger.info(
        "data: %d samples prepared in %.1f s, %d skipped %s, alignment yield %.3f",
        num_samples, time.perf_counter() - start, skip_counter.total, skip_counter.as_dict(),
        prep_stats.alignment_yield,
    )
    plan_info = {
        "plan_format": PLAN_FORMAT,
        "num_samples": num_samples,
        "skipped": skip_counter.as_dict(),
        "prep": prep_stats.as_dict(),
        "teacher": teacher_info(config),
        "student": student_info(config, student_tok),
        "teacher_tokenizer_fingerprint": _fingerprint(teacher_tok),
        "versions": library_versions(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(plan_info, indent=2, sort_keys=True))
    return plan_info


def _fingerprint(tokenizer: Any) -> str:
    from tide.tokenizer_fingerprint import tokenizer_fingerprint

    return tokenizer_fingerprint(tokenizer)


def teacher_info(config: BuildConfig) -> dict[str, Any]:
    """The manifest's ``teacher`` section, read from the checkpoint's config.json (no weights loaded)."""
    from tide.models.llada2_moe import MODEL_TYPE as LLADA2_MODEL_TYPE
    from tide.models.llada2_moe import LLaDA2MoeConfig
    from tide.models.wedlm import (
        DEFAULT_WEDLM_MASK_TOKEN_ID,
        DEFAULT_WEDLM_SHARED_VOCAB_SIZE,
        WEDLM_MODEL_TYPE,
        read_checkpoint_config,
    )

    raw = read_checkpoint_config(config.teacher)
    model_type = raw.get("model_type")
    mask_id = raw.get("mask_token_id")
    shared = None
    if model_type == WEDLM_MODEL_TYPE:
        mask_id = DEFAULT_WEDLM_MASK_TOKEN_ID if mask_id is None else mask_id
        shared = raw.get("shared_vocab_size") or DEFAULT_WEDLM_SHARED_VOCAB_SIZE
    elif model_type == LLADA2_MODEL_TYPE and mask_id is None:
        # The upstream LLaDA2 config.json has no mask_token_id; the loaded model then carries the config
        # class default (DESIGN.md §2), so the plan must record the same id.
        mask_id = LLaDA2MoeConfig().mask_token_id
    if mask_id is None:
        raise BuildConfigError(f"teacher {config.teacher}: config.json has no mask_token_id")
    if config.pipeline == "shared" and shared is None:
        raise BuildConfigError(f"teacher {config.teacher}: pipeline 'shared' needs a shared_vocab_size in config.json")
    return {
        "name": str(raw.get("_name_or_path") or Path(config.teacher).name),
        "revision": raw.get("_commit_hash"),
        "weights_fingerprint": weights_fingerprint(config.teacher),
        "model_type": str(model_type),
        "regime": config.regime,
        "mask_token_id": int(mask_id),
        "vocab_size": int(raw["vocab_size"]),
        "shared_vocab_size": None if shared is None else int(shared),
    }


def student_info(config: BuildConfig, student_tok: Any) -> dict[str, Any]:
    """The manifest's ``student`` section."""
    if student_tok.mask_token_id is None:
        raise BuildConfigError(f"student tokenizer {config.student_tokenizer}: no mask token")
    if student_tok.eos_token_id is None:
        raise BuildConfigError(f"student tokenizer {config.student_tokenizer}: no EOS token")
    return {
        "tokenizer_fingerprint": _fingerprint(student_tok),
        "mask_token_id": int(student_tok.mask_token_id),
        "eos_token_id": int(student_tok.eos_token_id),
        "block_size": config.block_size,
        "max_length": config.max_length,
        "vocab_size": int(config.student_vocab_size or len(student_tok)),
    }


def weights_fingerprint(path: str) -> str | None:
    """sha256 over the names and contents of a checkpoint's weight files (``*.safetensors``, ``*.bin``)."""
    import hashlib

    files = sorted(p for p in Path(path).glob("*") if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode("utf-8") + b"\0")
        with open(file, "rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def library_versions() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in ("tide-offline", "torch", "transformers", "accelerate", "pyarrow", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# ---------------------------------------------------------------------------------------------- progress


def record_path(output: Path, shard: int) -> Path:
    return output / PROGRESS_DIR / f"shard-{shard:05d}.json"


def read_shard_record(output: Path, plan: BuildPlan, shard: int) -> dict[str, Any] | None:
    """The progress record of ``shard``, or None if missing, unreadable or for another file name."""
    path = record_path(output, shard)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("info", {}).get("file") != plan.shard_file(shard):
        return None
    return record


def shard_is_complete(output: Path, plan: BuildPlan, shard: int) -> bool:
    """True when the shard file is present and its size and sha256 equal its progress record."""
    from cache_schema.files import sha256_of_file

    record = read_shard_record(output, plan, shard)
    path = output / plan.shard_file(shard)
    if record is None or not path.is_file():
        return False
    info = record["info"]
    if path.stat().st_size != info["bytes"]:
        logger.warning("shard %s: size differs from its progress record; rebuilding it", path.name)
        return False
    if sha256_of_file(path) != info["sha256"]:
        logger.warning("shard %s: sha256 differs from its progress record; rebuilding it", path.name)
        return False
    return True


def _write_record(output: Path, shard: int, shard_info: Any, stats: ShardStats) -> None:

    record = {"shard": shard, "info": dataclasses.asdict(shard_info), "stats": stats.as_dict()}
    atomic_write_text(record_path(output, shard), json.dumps(record, indent=2, sort_keys=True))


def _remove_stale(output: Path, plan: BuildPlan, shard: int) -> None:
    """Drop the record and temporary files of a shard about to be (re)built."""
    record_path(output, shard).unlink(missing_ok=True)
    for tmp in output.glob(f".{plan.shard_file(shard)}.*.tmp"):
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- shards


class ShardBuilder:
    """Turns the units of one shard into cache rows with the teacher."""

    def __init__(self, config: BuildConfig, plan_info: dict[str, Any], device: Any) -> None:
        from tide.models.teacher import TeacherRunner, load_teacher
        from tide.runtime import resolve_dtype

        self.config = config
        self.device = device
        dtype = resolve_dtype(config.dtype, device)
        model = load_teacher(config.teacher, dtype=dtype, device=device)
        self.runner = TeacherRunner(
            model, regime=config.regime, block_size=config.block_size, head_chunk_size=config.lm_head_chunk
        )
        expected = plan_info["teacher"]["mask_token_id"]
        if self.runner.mask_token_id != expected:
            raise BuildConfigError(
                f"teacher {config.teacher}: loaded mask id {self.runner.mask_token_id} differs from the plan's {expected}"
            )
        self.shared_vocab_size = plan_info["teacher"]["shared_vocab_size"]
        pad = getattr(model.config, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0
        self.kinds = pass_kinds(config.passes)
        self.cost_factor = forward_cost_factor(config.pipeline, config.regime)
        logger.info("teacher %s on %s (%s), regime %s", config.teacher, device, dtype, config.regime)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def build(self, units: list[tuple[Any, int]]) -> tuple[list[dict[str, Any]], ShardStats]:
        """Rows (in unit order) and statistics for ``units`` = [(prepared sample, replica), ...]."""
        config = self.config
        start = time.perf_counter()
        stats = ShardStats()
        noises, requests_by_unit = [], []
        for index, (sample, replica) in enumerate(units):
            unit_noise = draw_unit_noise(
                sample, replica, pipeline=config.pipeline, seed=config.seed, eps=config.eps,
                demo_ratio=config.demo_ratio, compdemo="compdemo" in config.passes,
            )
            noises.append(unit_noise)
            requests_by_unit.append(build_requests(
                index, sample, unit_noise, pipeline=config.pipeline, kinds=self.kinds,
                teacher_mask_id=self.runner.mask_token_id,
            ))
        requests = [r for unit_requests in requests_by_unit for r in unit_requests]
        batches = pack_batches(
            requests, batch_tokens=config.batch_tokens, batch_rows=config.batch_rows, cost_factor=self.cost_factor
        )
        for batch in batches:
            teacher_start = time.perf_counter()
            stats.padded_tokens += run_teacher_batch(
                self.runner, batch, pipeline=config.pipeline, device=self.device, pad_id=self.pad_id,
                k=config.k, shared_vocab_size=self.shared_vocab_size, temperatures=config.temperatures,
            )
            self._sync()
            stats.teacher_seconds += time.perf_counter() - teacher_start
        stats.teacher_batches = len(batches)
        stats.teacher_forwards = len(requests)
        stats.real_tokens = sum(r.length for r in requests)
        rows = []
        for (sample, replica), unit_noise, unit_requests in zip(units, noises, requests_by_unit, strict=True):
            if config.pipeline == "shared":
                row = shared_row(
                    sample, replica, unit_noise, unit_requests, passes=config.passes, k=config.k,
                    num_temperatures=len(config.temperatures), value_dtype=config.value_dtype,
                )
                stats.targets += int(row["target_positions"].shape[0])
                self._tail_stats(stats, unit_requests)
            else:
                row = cross_row(sample, replica, unit_noise, unit_requests, passes=config.passes)
                stats.targets += int(row["chunk_masked"].sum())
            stats.masked_positions += int(row["masked_positions"].shape[0])
            rows.append(row)
        stats.rows = len(rows)
        stats.shard_seconds = time.perf_counter() - start
        return rows, stats

    def _tail_stats(self, stats: ShardStats, requests: list[Any]) -> None:
        """Tail mass 1 − Σ top-k p at T = 1 of the plain pass (of CompDemo when there is no plain pass)."""
        plain = [r for r in requests if r.kind == PLAIN]
        chosen = plain if "plain" in self.config.passes else requests
        for request in chosen:
            values = request.results["topk_values"].astype(np.float64)
            log_z = request.results["log_partitions"][:, 0].astype(np.float64)
            tail = 1.0 - np.exp(values - log_z[:, None]).sum(axis=1)
            stats.tail_mass_sum += float(np.clip(tail, 0.0, 1.0).sum())
            stats.tail_count += int(tail.shape[0])


def _schema(config: BuildConfig) -> Any:
    from cache_schema.schemas import schema_for

    return schema_for(
        config.pipeline, passes=config.passes, k=config.k, value_dtype=config.value_dtype,
        num_temperatures=len(config.temperatures),
    )


def _distinct_samples(plan: BuildPlan, shards: list[int]) -> int:
    total, last = 0, -1
    for shard in sorted(shards):
        samples = plan.shard_samples(shard)
        total += len(samples) - (1 if samples.start == last else 0)
        last = samples.stop - 1
    return total


def _build_shards(
    config: BuildConfig,
    plan: BuildPlan,
    todo: list[int],
    builder: ShardBuilder,
    student_tok: Any,
    teacher_tok: Any,
    hooks: BuildHooks,
    info: RankInfo,
) -> None:
    from tqdm.auto import tqdm

    from cache_schema.writer import AsyncShardWriter

    output = Path(config.output)
    for shard in todo:
        _remove_stale(output, plan, shard)
    todo_set = set(todo)
    expected = {shard: len(plan.shard_units(shard)) for shard in todo}
    last_sample = max(plan.shard_samples(shard).stop for shard in todo)
    pending: dict[int, list[tuple[Any, int]]] = {}
    submitted: list[tuple[int, ShardStats]] = []
    recorded = 0
    writer = AsyncShardWriter(
        output, schema=_schema(config), row_group_rows=config.rows_per_row_group, overwrite=True, max_pending=2
    )

    def record_written() -> None:
        nonlocal recorded
        written = writer.infos
        while recorded < len(written):
            shard, stats = submitted[recorded]
            _write_record(output, shard, written[recorded], stats)
            recorded += 1
            if hooks.after_shard is not None:
                hooks.after_shard(shard)

    bar = tqdm(
        total=_distinct_samples(plan, todo), unit="sample", desc=f"build rank {info.rank}",
        disable=not config.progress, dynamic_ncols=True,
    )
    try:
        for index, sample in enumerate(iter_prepared(config, student_tok, teacher_tok)):
            if index >= last_sample:
                break
            wanted = [(shard, r) for shard, r in plan.shard_units_of_sample(index) if shard in todo_set]
            for shard, replica in wanted:
                pending.setdefault(shard, []).append((sample, replica))
            if wanted:
                bar.update(1)
            for shard in sorted(s for s, units in pending.items() if len(units) == expected[s]):
                rows, stats = builder.build(pending.pop(shard))
                submitted.append((shard, stats))
                writer.submit(plan.shard_file(shard), rows)
                record_written()
        if pending:
            raise RuntimeError(
                f"the data yielded fewer samples than the plan ({plan.num_samples}); shards {sorted(pending)} "
                "are incomplete — did the sources change since progress/plan.json was written?"
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


# ---------------------------------------------------------------------------------------------- statistics


def summarise(plan_info: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """Build statistics for the manifest from the plan and every shard's progress record."""
    totals: dict[str, float] = {}
    for record in records:
        for key, value in record["stats"].items():
            totals[key] = totals.get(key, 0) + value
    total_bytes = sum(record["info"]["bytes"] for record in records)
    masked = int(totals.get("masked_positions", 0))
    targets = int(totals.get("targets", 0))
    teacher_seconds = float(totals.get("teacher_seconds", 0.0))
    build_seconds = float(totals.get("shard_seconds", 0.0))
    tail_count = int(totals.get("tail_count", 0))
    padded = int(totals.get("padded_tokens", 0))
    prep = plan_info["prep"]
    return {
        "samples": plan_info["num_samples"],
        "rows": int(totals.get("rows", 0)),
        "shards": len(records),
        "bytes": total_bytes,
        "skipped": plan_info["skipped"],
        "skipped_total": int(sum(plan_info["skipped"].values())),
        "alignment_yield": prep["alignment_yield"],
        "alignment_drops": prep["drops"],
        "masked_positions": masked,
        "targets": targets,
        "mean_tail_mass": (float(totals["tail_mass_sum"]) / tail_count) if tail_count else None,
        "bytes_per_masked_position": total_bytes / masked if masked else None,
        "bytes_per_target": total_bytes / targets if targets else None,
        "teacher_forwards": int(totals.get("teacher_forwards", 0)),
        "teacher_batches": int(totals.get("teacher_batches", 0)),
        "padding_efficiency": int(totals.get("real_tokens", 0)) / padded if padded else None,
        "teacher_seconds": teacher_seconds,
        "build_seconds": build_seconds,
        "teacher_time_fraction": teacher_seconds / build_seconds if build_seconds else None,
    }


def log_summary(stats: dict[str, Any]) -> None:
    def fmt(value: Any, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    logger.info(
        "build summary: %d samples → %d rows in %d shards (%s bytes); skipped %d %s",
        stats["samples"], stats["rows"], stats["shards"], stats["bytes"], stats["skipped_total"], stats["skipped"],
    )
    logger.info(
        "alignment yield %s; %d masked positions, %d targets; mean tail mass %s; %s bytes per masked position",
        fmt(stats["alignment_yield"], ".3f"), stats["masked_positions"], stats["targets"],
        fmt(stats["mean_tail_mass"], ".4f"), fmt(stats["bytes_per_masked_position"], ".1f"),
    )
    logger.info(
        "teacher %.1f s of %.1f s shard time (%s); %d forwards in %d batches, padding efficiency %s",
        stats["teacher_seconds"], stats["build_seconds"], fmt(stats["teacher_time_fraction"], ".1%"),
        stats["teacher_forwards"], stats["teacher_batches"], fmt(stats["padding_efficiency"], ".1%"),
    )
