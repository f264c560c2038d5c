"""Stage-one preparation of one sample: chat tokenisation on both sides, the student's trained positions
(``maskable``) and the student↔teacher alignment (docs/design.md#pipelines).

Student and teacher each render the messages with their own chat template, locate every content span,
and tokenize with character offsets. Which student tokens are trained is :mod:`tide.maskable`'s rule
(``train_turns``): by default the final turn only — every token after the prompt of the last message,
which must be an assistant's — or, with ``all``, every assistant turn with its end-of-turn token. A row
whose last-turn prompt fills ``max_length`` (or, with ``all``, whose first trained token lies past it) is
skipped. The student sequence is truncated to ``max_length`` and padded with EOS to a multiple of
``block_size`` (padding is maskable); the teacher sequence is truncated to ``teacher_max_length``.
Pipeline B (``"shared"``) aligns content tokens position to position, pipeline A (``"cross"``) by
byte-exact chunks; nothing aligned points past either truncated sequence.

Every data change is counted (:class:`PrepStats`): a content longer than both sequences can hold is cut
before tokenisation (:mod:`tide.alignment.content_budget`, which bounds the cost of one input), sequences
cut to their lengths count their samples and the tokens cut, special-token text inside a content is
encoded as plain text by default (``special_text``; :mod:`tide.alignment.special_text`) and counted, and a
row repeating an earlier conversation (same sample key) is dropped and counted as a skip, or kept and
counted (``duplicates``).

``teacher_context="paper"`` (the original's) then cuts the teacher sequence right after the last aligned
item — pipeline A after the last chunk, pipeline B after the last aligned position, then EOS-padded to
whole blocks as the original's WeDLM collator did — so the teacher never reads right context that the
student's truncated sequence lacks; ``"full"`` keeps the whole (capped) teacher sequence. A row that
cannot be used raises :class:`~stages.cache_build.skips.SkipSample`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cache_schema.schemas import PIPELINES
from stages.cache_build.messages import normalize_messages
from stages.cache_build.pipelines import build_pipeline
from stages.cache_build.skips import (
    SKIP_DUPLICATE,
    SKIP_LAST_NOT_ASSISTANT,
    SKIP_NO_MASKABLE,
    SKIP_PROMPT_TOO_LONG,
    SKIP_SPAN,
    SKIP_SPECIAL_TEXT,
    SKIP_TEMPLATE,
    SkipCounter,
    SkipSample,
)
from stages.cache_build.sources import RawSample
from tide.alignment.chunks import ChunkTable
from tide.alignment.content_budget import cut_contents
from tide.alignment.spans import ContentSpanError, TokenizedText, tokenize_chat
from tide.maskable import (
    TRAIN_TURNS,
    last_turn_maskable,
    last_turn_prompt,
    last_turn_prompt_length,
    special_token_ids,
    student_maskable,
)
from tide.noise import sample_key


@dataclass
class PreparedSample:
    """One tokenized, aligned sample (arrays are numpy; L = student length, a multiple of block_size).

    * ``input_ids`` int32 (L,) — student ids, EOS-padded; ``maskable`` bool (L,) — trained positions
      (assistant tokens, their end-of-turn token, and the padding).
    * ``teacher_input_ids`` int32 (L_T,) — teacher ids, truncated to ``teacher_max_length`` and, with the
      ``paper`` teacher context, cut after the last aligned item (pipeline B: then EOS-padded to blocks).
    * ``roles`` — role per message; ``student_char_spans``/``teacher_char_spans`` int64 (M, 2) — each
      content's character range in the rendered ``student_text``/``teacher_text``.
    * pipeline ``"shared"``: ``student_pos``/``teacher_pos`` int32 (P,) aligned pairs, ascending student
      position; ``chunks``/``chunk_in_prompt`` are None.
    * pipeline ``"cross"``: ``chunks`` a :class:`ChunkTable` (int32 (C,) columns, end exclusive) and
      ``chunk_in_prompt`` bool (C,) (a chunk with a student token that is not maskable: never in a loss);
      ``student_pos``/``teacher_pos`` are None.
    * ``num_padding`` EOS tokens appended; ``num_response_tokens`` maskable tokens that are not padding;
      ``num_covered_tokens`` of those covered by a pair / a response chunk; ``drops`` dropped pairs or
      chunks by reason.
    * what preparation changed: ``student_tokens_cut`` / ``teacher_tokens_cut`` tokens past the sequence
      lengths, ``content_cuts`` (contents, characters) cut before tokenisation, ``special_text`` special-token
      texts found inside contents (both sides).
    """

    sample_id: str
    sample_key: int
    input_ids: np.ndarray
    maskable: np.ndarray
    teacher_input_ids: np.ndarray
    roles: tuple[str, ...]
    student_char_spans: np.ndarray
    teacher_char_spans: np.ndarray
    student_text: str
    teacher_text: str
    num_padding: int
    num_response_tokens: int
    num_covered_tokens: int
    student_pos: np.ndarray | None = None
    teacher_pos: np.ndarray | None = None
    chunks: ChunkTable | None = None
    chunk_in_prompt: np.ndarray | None = None
    drops: Counter = field(default_factory=Counter)
    student_tokens_cut: int = 0
    teacher_tokens_cut: int = 0
    content_cuts: tuple[int, int] = (0, 0)
    special_text: int = 0

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class PrepStats:
    """Running totals over prepared samples; ``alignment_yield`` = covered / response tokens.

    The data changes: ``truncated_samples`` / ``truncated_tokens`` (student sequences cut to ``max_length``,
    tokens past it), the same for the teacher, ``cut_contents`` / ``cut_characters`` (contents cut before
    tokenisation, characters removed: the tokens past the sequence are then counted in what was kept),
    ``special_text_samples`` / ``special_text_tokens`` (special-token texts inside contents) and
    ``duplicates_kept`` (rows repeating an earlier conversation, kept by ``duplicates="keep"``).
    """

    samples: int = 0
    student_tokens: int = 0
    padding_tokens: int = 0
    teacher_tokens: int = 0
    response_tokens: int = 0
    covered_tokens: int = 0
    pairs: int = 0
    chunks: int = 0
    prompt_chunks: int = 0
    drops: Counter = field(default_factory=Counter)
    truncated_samples: int = 0
    truncated_tokens: int = 0
    teacher_truncated_samples: int = 0
    teacher_truncated_tokens: int = 0
    cut_contents: int = 0
    cut_characters: int = 0
    special_text_samples: int = 0
    special_text_tokens: int = 0
    duplicates_kept: int = 0

    def update(self, sample: PreparedSample) -> None:
        self.samples += 1
        self.student_tokens += sample.length
        self.padding_tokens += sample.num_padding
        self.teacher_tokens += int(sample.teacher_input_ids.shape[0])
        self.response_tokens += sample.num_response_tokens
        self.covered_tokens += sample.num_covered_tokens
        if sample.student_pos is not None:
            self.pairs += int(sample.student_pos.shape[0])
        if sample.chunks is not None and sample.chunk_in_prompt is not None:
            self.chunks += len(sample.chunks)
            self.prompt_chunks += int(sample.chunk_in_prompt.sum())
        self.drops.update(sample.drops)
        self.truncated_samples += sample.student_tokens_cut > 0
        self.truncated_tokens += sample.student_tokens_cut
        self.teacher_truncated_samples += sample.teacher_tokens_cut > 0
        self.teacher_truncated_tokens += sample.teacher_tokens_cut
        self.cut_contents += sample.content_cuts[0]
        self.cut_characters += sample.content_cuts[1]
        self.special_text_samples += sample.special_text > 0
        self.special_text_tokens += sample.special_text

    @property
    def alignment_yield(self) -> float:
        return self.covered_tokens / self.response_tokens if self.response_tokens else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "student_tokens": self.student_tokens,
            "padding_tokens": self.padding_tokens,
            "teacher_tokens": self.teacher_tokens,
            "response_tokens": self.response_tokens,
            "covered_tokens": self.covered_tokens,
            "alignment_yield": self.alignment_yield,
            "pairs": self.pairs,
            "chunks": self.chunks,
            "prompt_chunks": self.prompt_chunks,
            "drops": {k: int(v) for k, v in sorted(self.drops.items())},
            "truncated_samples": self.truncated_samples,
            "truncated_tokens": self.truncated_tokens,
            "teacher_truncated_samples": self.teacher_truncated_samples,
            "teacher_truncated_tokens": self.teacher_truncated_tokens,
            "cut_contents": self.cut_contents,
            "cut_characters": self.cut_characters,
            "special_text_samples": self.special_text_samples,
            "special_text_tokens": self.special_text_tokens,
            "duplicates_kept": self.duplicates_kept,
        }


def _tokenize_side(tokenizer: Any, messages: list[dict[str, str]], side: str, split_special: bool) -> TokenizedText:
    try:
        return tokenize_chat(tokenizer, messages, split_special=split_special)
    except ContentSpanError as exc:
        raise SkipSample(SKIP_SPAN, f"{side}: {exc}") from exc
    except Exception as exc:  # template engines raise their own exception types on odd conversations
        raise SkipSample(SKIP_TEMPLATE, f"{side}: {type(exc).__name__}: {exc}") from exc


TEACHER_CONTEXTS = ("paper", "full")
# Special-token text inside a content: encoded as plain text (split), dropped with its row (skip), or
# tokenised as the control tokens it spells (keep: the tokenizer's own behaviour, which can forge turns).
SPECIAL_TEXT_MODES = ("split", "skip", "keep")
# A row repeating an earlier conversation (same sample key): dropped and counted, or kept and counted.
DUPLICATE_MODES = ("drop", "keep")


@dataclass(frozen=True)
class PreparationSettings:
    """How rows become samples: the pipeline (which alignment), the block size, both length limits, which
    turns are trained (``TRAIN_TURNS``) and how much teacher context is kept (``TEACHER_CONTEXTS``)."""

    pipeline: str
    block_size: int
    max_length: int
    teacher_max_length: int
    train_turns: str = "last"
    teacher_context: str = "paper"
    special_text: str = "split"
    duplicates: str = "drop"

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise ValueError(f"pipeline={self.pipeline!r}: expected one of {PIPELINES}")
        if self.block_size <= 0:
            raise ValueError(f"block_size={self.block_size}: must be positive")
        if self.max_length <= 0 or self.max_length % self.block_size:
            raise ValueError(
                f"max_length={self.max_length}: must be a positive multiple of block_size={self.block_size}")
        if self.teacher_max_length <= 0:
            raise ValueError(f"teacher_max_length={self.teacher_max_length}: must be positive")
        if self.train_turns not in TRAIN_TURNS:
            raise ValueError(f"train_turns={self.train_turns!r}: expected one of {TRAIN_TURNS}")
        if self.teacher_context not in TEACHER_CONTEXTS:
            raise ValueError(f"teacher_context={self.teacher_context!r}: expected one of {TEACHER_CONTEXTS}")
        if self.special_text not in SPECIAL_TEXT_MODES:
            raise ValueError(f"special_text={self.special_text!r}: expected one of {SPECIAL_TEXT_MODES}")
        if self.duplicates not in DUPLICATE_MODES:
            raise ValueError(f"duplicates={self.duplicates!r}: expected one of {DUPLICATE_MODES}")


def _trained_positions(messages: list[dict[str, str]], student: TokenizedText, student_tok: Any,
                       settings: PreparationSettings) -> np.ndarray:
    """bool (N,) over the full student tokenization; raises SkipSample when nothing fits ``max_length``."""
    max_length = settings.max_length
    if settings.train_turns == "last":
        if messages[-1]["role"] != "assistant":
            raise SkipSample(SKIP_LAST_NOT_ASSISTANT, f"last message is {messages[-1]['role']!r}")
        try:
            prompt_length = min(_last_turn_prompt_length(student_tok, messages, student, settings), len(student.ids))
        except Exception as exc:  # template engines raise their own exception types on odd conversations
            raise SkipSample(SKIP_TEMPLATE, f"student last-turn prompt: {type(exc).__name__}: {exc}") from exc
        if prompt_length >= max_length:
            raise SkipSample(SKIP_PROMPT_TOO_LONG, f"last-turn prompt of {prompt_length} tokens >= {max_length}")
        mask = last_turn_maskable(len(student.ids), prompt_length)
        if not mask.any():
            raise SkipSample(SKIP_NO_MASKABLE)
        return mask
    mask = student_maskable(student, [m["role"] for m in messages], special_token_ids(student_tok))
    maskable_index = np.flatnonzero(mask)
    if maskable_index.size == 0:
        raise SkipSample(SKIP_NO_MASKABLE)
    if maskable_index[0] >= max_length:
        raise SkipSample(SKIP_PROMPT_TOO_LONG, f"first response token at {maskable_index[0]} >= {max_length}")
    return mask


def _last_turn_prompt_length(student_tok: Any, messages: list[dict[str, str]], student: TokenizedText,
                             settings: PreparationSettings) -> int:
    """Tokens of the final turn's prompt, tokenised as the sample is: when a content's special-token text
    was split into plain tokens, the prompt's is too (else the prompt would count it as control tokens)."""
    if student.special_in_content == 0 or settings.special_text != "split":
        return last_turn_prompt_length(student_tok, messages)
    prompt = tokenize_chat(student_tok, messages[:-1], rendered=last_turn_prompt(student_tok, messages))
    return len(prompt.ids)


def _cut_teacher(prepared: PreparedSample, pipeline: Any, block_size: int, teacher_eos: int | None) -> None:
    """The ``paper`` teacher context: end after the last aligned item; pipeline B pads to whole blocks."""
    end = pipeline.teacher_context_end(prepared)
    ids = prepared.teacher_input_ids if end is None else prepared.teacher_input_ids[:end]
    if pipeline.pads_teacher_to_blocks:
        if teacher_eos is None:
            raise ValueError("teacher tokenizer has no eos_token_id: it is needed to pad the teacher to blocks")
        padded = -(-len(ids) // block_size) * block_size
        ids = np.concatenate([ids, np.full(padded - len(ids), teacher_eos, dtype=np.int32)])
    prepared.teacher_input_ids = np.ascontiguousarray(ids, dtype=np.int32)


def prepare_sample(raw: RawSample, student_tok: Any, teacher_tok: Any, settings: PreparationSettings) -> PreparedSample:
    """Tokenize and align one row; raises :class:`SkipSample` when it cannot be used."""
    block_size, max_length = settings.block_size, settings.max_length
    eos = student_tok.eos_token_id
    if eos is None:
        raise ValueError("student tokenizer has no eos_token_id: it is needed to pad to the block size")
    messages = normalize_messages(raw.messages)
    key = sample_key(messages)  # of the conversation as read: duplicates and held-out splits go by it
    roles = tuple(m["role"] for m in messages)
    split_special = settings.special_text != "keep"
    messages, cuts = cut_contents(messages, [(student_tok, max_length), (teacher_tok, settings.teacher_max_length)],
                                  split_special=split_special)
    student = _tokenize_side(student_tok, messages, "student", split_special)
    teacher = _tokenize_side(teacher_tok, messages, "teacher", split_special)
    special_text = student.special_in_content + teacher.special_in_content
    if special_text and settings.special_text == "skip":
        raise SkipSample(SKIP_SPECIAL_TEXT, f"{special_text} special-token texts inside message contents")

    full_mask = _trained_positions(messages, student, student_tok, settings)
    kept = min(len(student.ids), max_length)
    padded = -(-kept // block_size) * block_size
    input_ids = np.full(padded, eos, dtype=np.int32)
    input_ids[:kept] = student.ids[:kept]
    maskable = np.ones(padded, dtype=bool)
    maskable[:kept] = full_mask[:kept]
    teacher_kept = min(len(teacher.ids), settings.teacher_max_length)
    teacher_ids = np.ascontiguousarray(teacher.ids[:teacher_kept], dtype=np.int32)
    response = int(full_mask[:kept].sum())

    prepared = PreparedSample(
        sample_id=raw.sample_id,
        sample_key=key,
        input_ids=input_ids,
        maskable=maskable,
        teacher_input_ids=teacher_ids,
        roles=roles,
        student_char_spans=student.content_spans,
        teacher_char_spans=teacher.content_spans,
        student_text=student.text,
        teacher_text=teacher.text,
        num_padding=padded - kept,
        num_response_tokens=response,
        num_covered_tokens=0,
        student_tokens_cut=len(student.ids) - kept,
        teacher_tokens_cut=len(teacher.ids) - teacher_kept,
        content_cuts=(len(cuts), sum(cut.removed for cut in cuts)),
        special_text=special_text,
    )
    pipeline = build_pipeline(settings.pipeline)
    try:
        pipeline.align(prepared, student, teacher, student_tok, teacher_tok,
                       student_limit=kept, teacher_limit=teacher_kept)
    except ContentSpanError as exc:  # contents the two templates render too differently to align
        raise SkipSample(SKIP_SPAN, str(exc)) from exc
    if settings.teacher_context == "paper":
        _cut_teacher(prepared, pipeline, block_size, teacher_tok.eos_token_id)
    return prepared


def prepare_samples(
    source_iter: Iterable[RawSample],
    student_tok: Any,
    teacher_tok: Any,
    settings: PreparationSettings,
    *,
    skip_counter: SkipCounter | None = None,
    stats: PrepStats | None = None,
) -> Iterator[PreparedSample]:
    """Prepare every row of ``source_iter`` (e.g. :func:`stages.cache_build.sources.iter_sources`), in order, skipping and counting
    unusable rows in ``skip_counter`` and accumulating :class:`PrepStats` into ``stats`` if given.

    A row whose conversation (sample key) an earlier row already had is dropped and counted as
    ``duplicate`` (``settings.duplicates="drop"``) or kept and counted in ``stats.duplicates_kept``; the
    keys seen are held in memory (about 100 bytes per sample)."""
    skip_counter = SkipCounter() if skip_counter is None else skip_counter
    seen: set[int] = set()
    for raw in source_iter:
        try:
            sample = prepare_sample(raw, student_tok, teacher_tok, settings)
        except SkipSample as skip:
            skip_counter.add(skip.reason, raw.sample_id, skip.detail)
            continue
        if sample.sample_key in seen:
            if settings.duplicates == "drop":
                skip_counter.add(SKIP_DUPLICATE, raw.sample_id, f"sample key {sample.sample_key} seen before")
                continue
            if stats is not None:
                stats.duplicates_kept += 1
        seen.add(sample.sample_key)
        if stats is not None:
            stats.update(sample)
        yield sample
