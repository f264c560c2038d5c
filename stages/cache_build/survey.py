"""The data survey of a build: one counting pass over the prepared data, stored in the cache's journal.

The survey fixes what every rank needs before any teacher runs, and is where the build states what its
noise replicas cost before the teacher starts (:func:`replica_tradeoff`): how many samples survive preparation
(hence the shard layout), the skip counts and alignment statistics, the teacher's and student's ids, the
teacher tokenizer's fingerprint, the library versions and, for the shared pipeline, the id table (the
trained ids by frequency, whose ranks the targets store). It is a pure function of the settings and the
data, so every rank that finds none makes the same one and writes it atomically; no rank waits for another.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cache_schema.codec import item_bytes
from cache_schema.directory import CacheDirectory
from stages.cache_build.config import BuildConfig, BuildConfigError
from stages.cache_build.pipelines import build_pipeline
from stages.provenance import library_versions, weights_fingerprint

logger = logging.getLogger(__name__)

SURVEY_FORMAT = 2  # 2: the id table of the shared pipeline

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


def preparation_settings(config: BuildConfig) -> Any:
    """How the build turns rows into samples (:class:`stages.cache_build.preparation.PreparationSettings`)."""
    from stages.cache_build.preparation import PreparationSettings

    return PreparationSettings(pipeline=config.pipeline, block_size=config.block_size,
                               max_length=config.max_length, teacher_max_length=config.teacher_max_length,
                               train_turns=config.train_turns, teacher_context=config.teacher_context)


def iter_prepared(config: BuildConfig, student_tok: Any, teacher_tok: Any, skip_counter: Any = None,
                  stats: Any = None) -> Iterator[Any]:
    """Prepared samples of the configured sources (interleaved unless ``mix_sources`` is off), at most
    ``max_samples``."""
    from stages.cache_build.preparation import prepare_samples
    from stages.cache_build.sources import iter_sources

    prepared = prepare_samples(
        iter_sources(config.sources, skip_counter, mix=config.mix_sources),
        student_tok,
        teacher_tok,
        preparation_settings(config),
        skip_counter=skip_counter,
        stats=stats,
    )
    if config.max_samples is not None:
        prepared = itertools.islice(prepared, config.max_samples)
    yield from prepared


def teacher_info(config: BuildConfig) -> dict[str, Any]:
    """The manifest's ``teacher`` section, read from the checkpoint's config.json (no weights loaded)."""
    from tide.models.loading import read_checkpoint_config
    from tide.models.teacher import teacher_vocabulary

    raw = read_checkpoint_config(config.teacher)
    try:
        ids = teacher_vocabulary(raw, where=f"teacher {config.teacher}")
    except ValueError as exc:
        raise BuildConfigError(str(exc)) from None
    if build_pipeline(config.pipeline).has_vocabulary_targets and ids.shared_vocab_size is None:
        raise BuildConfigError(f"teacher {config.teacher}: pipeline 'shared' needs a shared_vocab_size in config.json")
    return {
        "name": str(raw.get("_name_or_path") or Path(config.teacher).name),
        "revision": raw.get("_commit_hash"),
        "weights_fingerprint": weights_fingerprint(config.teacher),
        "model_type": ids.model_type,
        "regime": config.regime,
        "mask_token_id": ids.mask_token_id,
        "vocab_size": ids.vocab_size,
        "shared_vocab_size": ids.shared_vocab_size,
    }


def student_info(config: BuildConfig, student_tok: Any) -> dict[str, Any]:
    """The manifest's ``student`` section."""
    from tide.tokenizer_fingerprint import tokenizer_fingerprint

    if student_tok.mask_token_id is None:
        raise BuildConfigError(f"student tokenizer {config.student_tokenizer}: no mask token")
    if student_tok.eos_token_id is None:
        raise BuildConfigError(f"student tokenizer {config.student_tokenizer}: no EOS token")
    return {
        "tokenizer_fingerprint": tokenizer_fingerprint(student_tok),
        "mask_token_id": int(student_tok.mask_token_id),
        "eos_token_id": int(student_tok.eos_token_id),
        "block_size": config.block_size,
        "max_length": config.max_length,
        "vocab_size": int(config.student_vocab_size or len(student_tok)),
    }


def load_or_make_survey(config: BuildConfig, student_tok: Any, teacher_tok: Any) -> dict[str, Any]:
    """The survey of the output directory's build, made by a counting pass over the data if missing."""
    directory = CacheDirectory(config.output)
    survey = directory.read_survey()
    if survey is not None:
        if survey.get("survey_format") != SURVEY_FORMAT:
            raise BuildConfigError(
                f"{directory.survey_path}: survey format {survey.get('survey_format')!r} is not {SURVEY_FORMAT}")
        logger.info("%s", replica_tradeoff(config, survey))
        return survey
    from stages.cache_build.preparation import PrepStats
    from stages.cache_build.skips import SkipCounter
    from tide.tokenizer_fingerprint import tokenizer_fingerprint

    start = time.perf_counter()
    skip_counter, prep_stats = SkipCounter(), PrepStats()
    id_counter = build_pipeline(config.pipeline).survey_counter()
    num_samples = 0
    for sample in iter_prepared(config, student_tok, teacher_tok, skip_counter, prep_stats):
        num_samples += 1
        if id_counter is not None:
            id_counter.add(sample)
    logger.info(
        "data: %d samples prepared in %.1f s, %d skipped %s, alignment yield %.3f",
        num_samples, time.perf_counter() - start, skip_counter.total, skip_counter.as_dict(),
        prep_stats.alignment_yield,
    )
    teacher = teacher_info(config)
    survey = {
        "survey_format": SURVEY_FORMAT,
        "num_samples": num_samples,
        "skipped": skip_counter.as_dict(),
        "prep": prep_stats.as_dict(),
        "teacher": teacher,
        "student": student_info(config, student_tok),
        "teacher_tokenizer_fingerprint": tokenizer_fingerprint(teacher_tok),
        "versions": library_versions(),
    }
    if id_counter is not None:
        survey["id_table"] = id_counter.table(teacher["shared_vocab_size"])
    directory.write_survey(survey)
    logger.info("%s", replica_tradeoff(config, survey))
    return survey


def replica_tradeoff(config: BuildConfig, survey: dict[str, Any]) -> str:
    """What ``replicas`` costs, from the survey: rows, teacher forwards and tokens, and the cache's
    uncompressed target bytes, all linear in R. The original trained online, paying one teacher pass per
    sample per epoch, i.e. the teacher compute of R = epochs; one replica makes every epoch replay the same
    timestep, mask and CompDemo split."""
    samples, replicas = int(survey["num_samples"]), config.replicas
    prep = survey["prep"]
    rows = samples * replicas
    per_row_forwards = ("plain" in config.passes) + 2 * ("compdemo" in config.passes)
    pipeline = build_pipeline(config.pipeline)
    mean_teacher = prep["teacher_tokens"] / max(prep["samples"], 1)
    teacher_tokens = rows * per_row_forwards * mean_teacher * pipeline.forward_cost_factor(config.regime)
    mean_t = config.eps + (1 - config.eps) / 2  # E[t]: each maskable token is masked with probability t
    per_sample = prep["student_tokens"] / max(prep["samples"], 1)
    base = per_sample * 5 + mean_teacher * 4 + mean_t * per_sample * 4  # ids + maskable, teacher ids, masked
    passes = len(config.passes)
    if pipeline.has_vocabulary_targets:  # per target: both positions, then per pass its k entries, tails, gold
        # k is the most a mass policy keeps, so the figure is an upper bound for it and exact for a fixed k
        per_target = 8 + passes * item_bytes(config.encoding, config.k, len(config.temperatures))
        targets = mean_t * prep["covered_tokens"] / max(prep["samples"], 1)
    else:  # per chunk (all are stored): four range ends, two flags, a log-prob per pass
        per_target, targets = 18 + 4 * passes, prep["chunks"] / max(prep["samples"], 1)
    size = rows * (base + targets * per_target)
    bound = " at most (a mass policy keeps up to k entries)" if pipeline.has_vocabulary_targets and \
        config.k_policy == "mass" else ""
    return (
        f"noise replicas: {replicas} (epoch e trains on replica e mod {replicas}; training beyond {replicas} "
        f"epochs replays noise). Cost, linear in replicas: {samples} samples x {replicas} = {rows} rows, about "
        f"{rows * per_row_forwards} teacher forwards over {teacher_tokens:.3g} teacher tokens, about "
        f"{size / 2**30:.3g} GiB before compression{bound}. The original distilled online: one teacher pass "
        f"per sample per epoch, the same teacher compute as replicas = epochs."
    )
