"""Stage-one build settings: one dataclass (its fields are the YAML keys and the flags), resolution and comparison.

The options themselves (flags, YAML, typed values) come from :mod:`stages.options`. Pipeline-dependent
defaults (teacher length, stored temperatures) are filled by :meth:`BuildConfig.resolve` from the detected
pipeline; the paper's per-pipeline builds are ``configs/cache/*.yaml``.

The resolved configuration is stored in the output directory when a build starts
(``build_config.json``); a later run against the same directory must resolve to the same *content*
settings or it is refused with a message naming every differing setting. Runtime-only settings (where
the output lives, which device, how rows are batched through the teacher) may change between runs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cache_schema.directory import CacheDirectory
from cache_schema.exact_targets import HIDDEN_BF16, HIDDEN_ENCODINGS
from cache_schema.manifest import REGIMES
from cache_schema.schemas import (
    ENCODING_PACKED,
    PASSES,
    PIPELINE_CROSS,
    PIPELINE_SHARED,
    PIPELINES,
    SPARSE_ENCODINGS,
)
from stages.cache_build.exact_build import TARGET_KINDS
from stages.cache_build.preparation import DUPLICATE_MODES, SPECIAL_TEXT_MODES, TEACHER_CONTEXTS
from stages.cache_build.sources import PAPER_SOURCES
from stages.options import OptionsError, option
from tide.losses.registry import DEFAULT_VOCAB_TEMPERATURE
from tide.maskable import TRAIN_TURNS
from tide.models.model_types import LLADA2_MODEL_TYPE, WEDLM_MODEL_TYPE
from tide.runtime import DTYPE_CHOICES
from tide.targets import K_POLICIES, KPolicy

# Teacher config ``model_type`` → pipeline (docs/design.md#pipelines).
TEACHER_PIPELINES = {LLADA2_MODEL_TYPE: PIPELINE_CROSS, WEDLM_MODEL_TYPE: PIPELINE_SHARED}

# Paper defaults per pipeline (docs/design.md#paper-settings): teacher length and stored temperatures.
PIPELINE_DEFAULTS: dict[str, dict[str, Any]] = {
    PIPELINE_CROSS: {"teacher_max_length": 1024, "temperatures": [1.0]},
    # T = 1 (always stored) and the vocabulary losses' default temperature.
    PIPELINE_SHARED: {"teacher_max_length": 768, "temperatures": [1.0, DEFAULT_VOCAB_TEMPERATURE]},
}

# Settings that never change what a shard contains; every other setting must match on resume.
RUNTIME_KEYS = frozenset({"output", "overwrite", "device", "batch_tokens", "batch_rows", "lm_head_chunk", "progress"})

REQUIRED = ("teacher", "student_tokenizer", "output")

# Noise replicas of the paper builds: one per training epoch (the original drew fresh noise every step), so
# tide-train's 10 epochs never replay a timestep or mask. Teacher compute and cache bytes grow with it.
PAPER_REPLICAS = 10


def _per_pipeline(key: str) -> str:
    """The shown default of a pipeline-dependent setting, e.g. ``1024 for cross; 768 for shared``."""
    def text(value: Any) -> str:
        return " ".join(str(v) for v in value) if isinstance(value, list) else str(value)

    return "; ".join(f"{text(PIPELINE_DEFAULTS[p][key])} for {p}" for p in PIPELINES)


class BuildConfigError(OptionsError):
    """A build setting is missing, malformed, or differs from the one an output directory was built with."""


_DUPLICATES_HELP = ("a row repeating an earlier conversation (same sample key): drop = skip it (counted as "
                    "'duplicate'), keep = train on it again (counted)")
_SPECIAL_TEXT_HELP = ("special-token text inside a message content (e.g. '<|im_end|>'): split = encode it as plain "
                      "text, skip = drop the row, keep = tokenise it as the control tokens it spells (forges "
                      "turns); always counted")

_DATA = "models and data"
_TARGETS = "sequences and targets"
_NOISE = "noise"
_RUN = "execution"


@dataclass
class BuildConfig:
    """Every setting of ``tide-cache build``; field names are the YAML keys and (with ``-``) the CLI flags."""

    teacher: str | None = option(None, group=_DATA, help="teacher checkpoint directory (kind autodetected from "
                                                         "config.json); required")
    student_tokenizer: str | None = option(None, group=_DATA,
                                           help="student tokenizer directory (must have a mask token); required")
    sources: str = option(PAPER_SOURCES, group=_DATA, aliases=("--data",), default_text="the paper's mixture",
                          help="data sources joined with '+', interleaved in proportion to their sizes: "
                               "file.jsonl|.json|.parquet or a Hugging Face dataset NAME[@CONFIG|@*][:SPLIT], each "
                               "optionally followed by {holdout=F,seed=S,part=train|heldout,lang=WORD}; default: "
                               f"{PAPER_SOURCES}")
    output: str | None = option(None, group=_DATA, aliases=("-o",),
                                help="cache output directory (resumed if it exists); required")
    overwrite: bool = option(False, group=_DATA,
                             help="delete the cache files already in --output (another build's, a finished cache, "
                                  "a killed build's) and start again; without it a build only writes into an "
                                  "empty directory or resumes its own")
    duplicates: str = option("drop", group=_DATA, choices=DUPLICATE_MODES, help=_DUPLICATES_HELP)
    special_text: str = option("split", group=_DATA, choices=SPECIAL_TEXT_MODES, help=_SPECIAL_TEXT_HELP)
    teacher_tokenizer: str | None = option(None, group=_DATA,
                                           help="teacher tokenizer directory (default: the teacher directory)")
    pipeline: str = option("auto", group=_TARGETS, choices=("auto", *PIPELINES),
                           help="cross (A: chunk log-probs) or shared (B: top-k); auto: from the teacher's model_type")
    max_length: int = option(512, group=_TARGETS, help="student sequence length (a multiple of --block-size)")
    teacher_max_length: int | None = option(None, group=_TARGETS, default_text=_per_pipeline("teacher_max_length"),
                                            help="teacher sequence length")
    block_size: int = option(32, group=_TARGETS, help="block size")
    k: int = option(64, group=_TARGETS,
                    help="top entries per target position (shared only): the k of --k-policy fixed, the most a "
                         "mass policy keeps")
    k_policy: str = option("mass", group=_TARGETS, choices=K_POLICIES,
                           help="fixed: k entries everywhere; mass: the fewest entries holding --k-mass of the "
                                "teacher's probability at --k-mass-temperature, at least --k-floor, at most --k")
    k_mass: float = option(0.9, group=_TARGETS, help="mass policy: the teacher probability the kept entries reach")
    k_mass_temperature: float = option(1.0, group=_TARGETS, help="mass policy: the temperature --k-mass is measured at")
    k_floor: int = option(16, group=_TARGETS,
                          help="mass policy: the fewest entries a position keeps, at most --k (a T = 1 policy without "
                               "a floor starves training at T = 2)")
    encoding: str = option(ENCODING_PACKED, group=_TARGETS, choices=SPARSE_ENCODINGS,
                           help="storage of the top entries: rank24-delta8 packs a frequency rank and an 8-bit value "
                                "step into 4 bytes; float32 stores int32 ids and float32 values (exact)")
    targets: str = option("sparse", group=_TARGETS, choices=TARGET_KINDS,
                          help="what a shared cache stores per target position: sparse (the top entries of "
                               "--k-policy, tail masses, gold log-prob), exact (the teacher's final hidden state, "
                               "with its LM-head rows once in the cache: the whole distribution at any temperature; "
                               "about 2 bytes per teacher hidden unit), or both")
    hidden_encoding: str = option(HIDDEN_BF16, group=_TARGETS, choices=HIDDEN_ENCODINGS,
                                  help="exact targets: bfloat16 (the teacher's precision) or int8-rowscale (half the "
                                       "bytes: an 8-bit code per value and a scale per position)")
    temperatures: list[float] | None = option(None, group=_TARGETS, metavar="T",
                                              default_text=_per_pipeline("temperatures"),
                                              help="stored temperatures, starting with 1.0, space- or comma-separated")
    replicas: int = option(PAPER_REPLICAS, group=_NOISE,
                           help="noise replicas per sample (epoch e of training uses replica e mod R): the paper's "
                                "one per epoch; teacher compute and cache bytes grow linearly with R")
    seed: int = option(0, group=_NOISE, help="global noise seed")
    eps: float = option(1e-3, group=_NOISE, help="minimum timestep")
    passes: list[str] = option(default_factory=lambda: list(PASSES), group=_TARGETS, choices=PASSES,
                               separators=",+", help="teacher passes to store, comma-separated")
    demo_ratio: float = option(0.5, group=_TARGETS, help="CompDemo share of group A")
    holdout_fraction: float = option(0.0, group=_DATA,
                                     help="share of samples set aside for validation, chosen by sample key: "
                                          "tide-train never trains on them and logs their losses as val/...")
    regime: str = option("paper", group=_TARGETS, choices=REGIMES, help="teacher attention regime")
    max_samples: int | None = option(None, group=_DATA, help="use at most this many prepared samples (default: all)")
    mix_sources: bool = option(True, group=_DATA,
                               help="interleave the sources in proportion to their sizes (else source after source)")
    train_turns: str = option("last", group=_TARGETS, choices=TRAIN_TURNS,
                              help="trained tokens: last = the final turn after its prompt (the original's), "
                                   "all = every assistant turn and its end-of-turn token")
    teacher_context: str = option("paper", group=_TARGETS, choices=TEACHER_CONTEXTS,
                                  help="paper = cut the teacher sequence after the last aligned item (pipeline B "
                                       "then EOS-padded to blocks), as the original did; full = keep it whole "
                                       "(capped at --teacher-max-length)")
    batch_tokens: int = option(16384, group=_RUN, help="teacher tokens per forward batch, padding included")
    batch_rows: int | None = option(None, group=_RUN, help="at most this many sequences per teacher batch")
    rows_per_shard: int = option(1024, group=_RUN, help="cache rows per shard")
    rows_per_row_group: int = option(256, group=_RUN, help="rows per Parquet row group")
    device: str = option("auto", group=_RUN, help="auto, cpu, cuda, cuda:N")
    dtype: str = option("auto", group=_RUN, choices=DTYPE_CHOICES,
                        help="teacher dtype (auto: bf16 on GPU, fp32 on CPU)")
    lm_head_chunk: int = option(1024, group=_RUN, help="positions per LM-head chunk")
    student_vocab_size: int | None = option(None, group=_TARGETS,
                                            help="student vocabulary size recorded in the manifest "
                                                 "(default: tokenizer size)")
    progress: bool = option(True, group=_RUN, help="progress bar")

    # ------------------------------------------------------------------ resolution

    def resolve(self, *, teacher_model_type: str | None = None) -> BuildConfig:
        """Fill pipeline-dependent defaults and validate every setting.

        ``teacher_model_type`` (the teacher config's ``model_type``) decides ``pipeline="auto"``; pass it
        when the teacher directory is not readable here (tests), else it is read from ``config.json``.
        Raises :class:`BuildConfigError` listing every problem found.
        """
        problems = [
            f"setting {name!r} is required (YAML key {name} or flag --{name.replace('_', '-')})"
            for name in REQUIRED if not getattr(self, name)
        ]
        values = dataclasses.asdict(self)
        if values["teacher_tokenizer"] is None:
            values["teacher_tokenizer"] = values["teacher"]
        pipeline = values["pipeline"]
        if pipeline == "auto":
            pipeline = None
            try:
                model_type = teacher_model_type or (
                    read_teacher_model_type(values["teacher"]) if values["teacher"] else None
                )
            except BuildConfigError as exc:
                problems.extend(exc.problems)
                model_type = None
            if model_type is not None and model_type not in TEACHER_PIPELINES:
                problems.append(
                    f"teacher {values['teacher']}: model_type {model_type!r} has no known pipeline "
                    f"(known: {sorted(TEACHER_PIPELINES)}); set pipeline: cross|shared explicitly"
                )
            elif model_type is not None:
                pipeline = TEACHER_PIPELINES[model_type]
        elif pipeline not in PIPELINES:
            problems.append(f"pipeline={pipeline!r}: expected one of {PIPELINES} or 'auto'")
            pipeline = None
        if pipeline is not None:
            values["pipeline"] = pipeline
            defaults = PIPELINE_DEFAULTS[pipeline]
            if values["teacher_max_length"] is None:
                values["teacher_max_length"] = defaults["teacher_max_length"]
            if values["temperatures"] is None:
                values["temperatures"] = list(defaults["temperatures"])
        if values["temperatures"] is not None:
            values["temperatures"] = [float(t) for t in values["temperatures"]]
        if isinstance(values["passes"], str):
            values["passes"] = [p for p in values["passes"].replace("+", ",").split(",") if p]
        if set(values["passes"]) <= set(PASSES):
            values["passes"] = [p for p in PASSES if p in values["passes"]]  # canonical order
        resolved = BuildConfig(**values)
        problems.extend(resolved._problems())
        if problems:
            raise BuildConfigError(problems)
        return resolved

    def _problems(self) -> list[str]:
        """One line per invalid setting; pipeline-dependent checks are skipped while the pipeline is unknown."""
        checks = [
            (self.pipeline in PIPELINES or self.pipeline == "auto",
             f"pipeline={self.pipeline!r}: expected one of {PIPELINES}"),
            (bool(self.passes) and set(self.passes) <= set(PASSES),
             f"passes={self.passes!r}: expected a non-empty subset of {PASSES}"),
            (self.regime in REGIMES, f"regime={self.regime!r}: expected one of {REGIMES}"),
            (self.encoding in SPARSE_ENCODINGS,
             f"encoding={self.encoding!r}: expected one of {SPARSE_ENCODINGS}"),
            (self.k_policy in K_POLICIES, f"k_policy={self.k_policy!r}: expected one of {K_POLICIES}"),
            (self.targets in TARGET_KINDS, f"targets={self.targets!r}: expected one of {TARGET_KINDS}"),
            (self.targets == "sparse" or self.pipeline != PIPELINE_CROSS,
             f"targets={self.targets!r}: exact targets need pipeline shared (the teacher's shared vocabulary); "
             "pipeline cross stores chunk log-probs"),
            (self.hidden_encoding in HIDDEN_ENCODINGS,
             f"hidden_encoding={self.hidden_encoding!r}: expected one of {HIDDEN_ENCODINGS}"),
            (0.0 < self.k_mass <= 1.0, f"k_mass={self.k_mass}: must lie in (0, 1]"),
            (self.k_mass_temperature > 0, f"k_mass_temperature={self.k_mass_temperature}: must be positive"),
            (self.k_floor >= 1, f"k_floor={self.k_floor}: must be at least 1"),
            (self.train_turns in TRAIN_TURNS, f"train_turns={self.train_turns!r}: expected one of {TRAIN_TURNS}"),
            (self.duplicates in DUPLICATE_MODES, f"duplicates={self.duplicates!r}: expected one of {DUPLICATE_MODES}"),
            (self.special_text in SPECIAL_TEXT_MODES,
             f"special_text={self.special_text!r}: expected one of {SPECIAL_TEXT_MODES}"),
            (self.teacher_context in TEACHER_CONTEXTS,
             f"teacher_context={self.teacher_context!r}: expected one of {TEACHER_CONTEXTS}"),
            (self.dtype in DTYPE_CHOICES, f"dtype={self.dtype!r}: expected one of {DTYPE_CHOICES}"),
            (self.block_size > 0, f"block_size={self.block_size}: must be positive"),
            (self.max_length > 0 and self.block_size > 0 and self.max_length % self.block_size == 0,
             f"max_length={self.max_length}: must be a positive multiple of block_size={self.block_size}"),
            (self.teacher_max_length is None or self.teacher_max_length > 0,
             f"teacher_max_length={self.teacher_max_length}: must be positive"),
            (self.k > 0, f"k={self.k}: must be positive"),
            (self.replicas >= 1, f"replicas={self.replicas}: must be at least 1"),
            (self.seed >= 0, f"seed={self.seed}: must be non-negative"),
            (0.0 < self.eps < 1.0, f"eps={self.eps}: must lie in (0, 1)"),
            (0.0 <= self.demo_ratio <= 1.0, f"demo_ratio={self.demo_ratio}: must lie in [0, 1]"),
            (0.0 <= self.holdout_fraction < 1.0, f"holdout_fraction={self.holdout_fraction}: must lie in [0, 1)"),
            (self.max_samples is None or self.max_samples > 0, f"max_samples={self.max_samples}: must be positive"),
            (self.batch_tokens > 0, f"batch_tokens={self.batch_tokens}: must be positive"),
            (self.batch_rows is None or self.batch_rows > 0, f"batch_rows={self.batch_rows}: must be positive"),
            (self.rows_per_shard > 0, f"rows_per_shard={self.rows_per_shard}: must be positive"),
            (self.rows_per_row_group > 0, f"rows_per_row_group={self.rows_per_row_group}: must be positive"),
            (self.lm_head_chunk > 0, f"lm_head_chunk={self.lm_head_chunk}: must be positive"),
        ]
        temperatures = self.temperatures
        if temperatures is not None:
            checks += [
                (bool(temperatures) and temperatures[0] == 1.0 and all(t > 0 for t in temperatures),
                 f"temperatures={temperatures}: must be positive and start with 1.0"),
                (len(set(temperatures)) == len(temperatures), f"temperatures={temperatures}: contains duplicates"),
            ]
        return [message for ok, message in checks if not ok]

    def target_policy(self) -> KPolicy:
        """The k policy of the sparse targets (shared pipeline)."""
        if self.k_policy == "fixed":
            return KPolicy.fixed(self.k)
        return KPolicy(kind="mass", ceiling=self.k, mass=self.k_mass, temperature=self.k_mass_temperature,
                       floor=min(self.k_floor, self.k))

    # ------------------------------------------------------------------ comparison and storage

    def content_dict(self) -> dict[str, Any]:
        """The settings that decide shard content (everything but ``RUNTIME_KEYS``)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RUNTIME_KEYS}

    def differences(self, stored: dict[str, Any]) -> list[str]:
        """Human-readable lines, one per content setting whose value differs from ``stored``."""
        current = self.content_dict()
        lines = []
        for key in sorted(set(current) | {k for k in stored if k not in RUNTIME_KEYS}):
            old, new = stored.get(key, "<absent>"), current.get(key, "<absent>")
            if _normalise(old) != _normalise(new):
                lines.append(f"{key}: output directory was built with {old!r}, this run has {new!r}")
        return lines

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


def _normalise(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_normalise(v) for v in value]
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def read_teacher_model_type(teacher_path: str) -> str:
    """The ``model_type`` of a teacher checkpoint directory's ``config.json``."""
    config_file = Path(teacher_path) / "config.json"
    if not config_file.is_file():
        raise BuildConfigError(
            f"teacher {teacher_path}: no config.json found, so the teacher kind cannot be detected; "
            "pass a checkpoint directory or set pipeline explicitly"
        )
    with open(config_file, encoding="utf-8") as handle:
        model_type = json.load(handle).get("model_type")
    if not model_type:
        raise BuildConfigError(f"teacher {config_file}: config.json has no model_type")
    return str(model_type)


def check_or_store_config(config: BuildConfig, directory: CacheDirectory) -> None:
    """Refuse a content change against an existing output directory; store the config on first use.

    Raises ``BuildConfigError`` naming every differing setting.
    """
    stored = directory.read_build_config()
    if stored is not None:
        diffs = config.differences(stored)
        if diffs:
            raise BuildConfigError(
                f"{directory.root} holds a build with different settings; refusing to mix them. "
                "Use a new --output, rerun with the original settings to resume, or add --overwrite to delete "
                "it and start again:\n  " + "\n  ".join(diffs)
            )
        return
    directory.write_build_config(json.loads(config.to_json()))
