"""TeacherRunner: teacher outputs at selected positions only, with the LM head applied in chunks.

One interface for both teachers and both attention regimes (docs/design.md#teacher-attention-regimes). Inputs for a batch:
``noised_ids`` (B, T) teacher ids with masked positions set to the teacher's mask id, right-padded, with
``lengths`` (B,) real lengths; ``clean_ids`` (B, T) the unnoised ids (layouts that concatenate x0 need
them); the wanted outputs as flat ``row_index`` / ``position`` LongTensors (N,) — logical positions in the
noised sequence, each below its row's length.

Layouts and attention masks of each (family, regime): :mod:`tide.models.teacher_layouts`.

Memory: the final hidden states of the selected positions are gathered first (N, hidden); the LM head runs
on chunks of ``head_chunk_size`` rows with fp32 softmax math, so at most a (chunk, V) fp32 logit tensor
exists at a time, never (B, T, V).

:func:`load_teacher` loads either teacher by the model type of its checkpoint; the teacher model modules
(:mod:`tide.models.llada2_moe`, :mod:`tide.models.wedlm`) are imported on the first load, not with this
module.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from tide.models.loading import from_pretrained_kwargs, read_checkpoint_config
from tide.models.teacher_layouts import (
    FAMILIES,
    REGIMES,
    WEDLM_NATIVE_FORMS,
    TeacherLayout,
    build_layout,
    infer_family,
    layout_hidden_states,
)

logger = logging.getLogger(__name__)



def _concat_results(parts: list[Any]) -> Any:
    """Concatenate per-chunk results: tensors, dataclasses or named tuples of tensors."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts, dim=0)
    if dataclasses.is_dataclass(first):
        merged = {
            field.name: _concat_results([getattr(p, field.name) for p in parts])
            for field in dataclasses.fields(first)
        }
        return type(first)(**merged)
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(_concat_results(list(items)) for items in zip(*parts, strict=True)))
    if all(part == first for part in parts):
        return first  # per-call constants (e.g. the temperatures) are the same in every chunk
    raise TypeError(f"cannot concatenate chunk results of type {type(first).__name__}")


class TeacherRunner:
    """Runs a teacher on a noised batch and returns outputs at the requested positions only.

    ``model``: a causal-LM-shaped model (``base_model`` returning ``last_hidden_state``; LM head from
    ``get_output_embeddings``) taking an explicit 4-D mask and position ids. ``family`` is inferred from
    the config when None. ``mask_token_id`` defaults to ``model.config.mask_token_id``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        regime: str = "paper",
        family: str | None = None,
        mask_token_id: int | None = None,
        block_size: int = 32,
        head_chunk_size: int = 1024,
        wedlm_native_form: str = "logical",
    ) -> None:
        if regime not in REGIMES:
            raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
        self.family = family if family is not None else infer_family(model.config)
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if mask_token_id is None:
            mask_token_id = getattr(model.config, "mask_token_id", None)
        if mask_token_id is None:
            raise ValueError("the teacher's mask token id is unknown: set config.mask_token_id or pass mask_token_id")
        if block_size <= 0 or head_chunk_size <= 0:
            raise ValueError(f"block_size ({block_size}) and head_chunk_size ({head_chunk_size}) must be positive")
        if wedlm_native_form not in WEDLM_NATIVE_FORMS:
            raise ValueError(f"wedlm_native_form must be one of {WEDLM_NATIVE_FORMS}, got {wedlm_native_form!r}")
        self.model = model
        self.regime = regime
        self.mask_token_id = int(mask_token_id)
        self.block_size = block_size
        self.head_chunk_size = head_chunk_size
        self.wedlm_native_form = wedlm_native_form

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    # -- validation and layout ------------------------------------------------------------------------

    def _check(self, noised_ids, lengths, row_index, position, clean_ids) -> None:
        if noised_ids.dim() != 2:
            raise ValueError(f"noised_ids must have shape (B, T), got {tuple(noised_ids.shape)}")
        batch, seq_len = noised_ids.shape
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must have shape ({batch},), got {tuple(lengths.shape)}")
        if bool((lengths < 1).any()) or bool((lengths > seq_len).any()):
            raise ValueError(f"lengths must lie in [1, {seq_len}], got {lengths.tolist()}")
        rows = int(self.model.get_input_embeddings().weight.shape[0])
        for name, ids in (("noised_ids", noised_ids), ("clean_ids", clean_ids)):
            if ids is not None and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= rows):
                raise ValueError(f"{name} must lie in [0, {rows}) (the teacher's embedding rows)")
        if clean_ids is not None and clean_ids.shape != noised_ids.shape:
            raise ValueError(
                f"clean_ids shape {tuple(clean_ids.shape)} differs from noised_ids {tuple(noised_ids.shape)}"
            )
        if row_index.dim() != 1 or position.shape != row_index.shape:
            raise ValueError(
                f"row_index and position must be 1-D of equal length, got {tuple(row_index.shape)} "
                f"and {tuple(position.shape)}"
            )
        if row_index.numel():
            if bool((row_index < 0).any()) or bool((row_index >= batch).any()):
                raise ValueError(f"row_index must lie in [0, {batch})")
            lengths_dev = lengths.to(position.device)
            if bool((position < 0).any()) or bool((position >= lengths_dev[row_index.to(position.device)]).any()):
                raise ValueError("every position must lie inside its row: 0 <= position < lengths[row_index]")

    def _pad(self, ids: torch.Tensor | None, extra: int) -> torch.Tensor | None:
        """Append ``extra`` filler columns (never attended: their keys are padding)."""
        if ids is None:
            return None
        pad_id = getattr(self.model.config, "pad_token_id", None)
        fill = ids.new_full((ids.shape[0], extra), int(pad_id) if pad_id is not None else 0)
        return torch.cat([ids, fill], dim=1)

    def layout(self, noised_ids, lengths, clean_ids=None) -> TeacherLayout:
        """The :class:`TeacherLayout` of this runner's regime for a batch (T padded to whole blocks for the
        block layouts)."""
        seq_len = noised_ids.shape[1]
        valid = torch.arange(seq_len, device=noised_ids.device)[None, :] < lengths.to(noised_ids.device)[:, None]
        if not (self.family == "llada2" and self.regime == "paper"):
            extra = -(-seq_len // self.block_size) * self.block_size - seq_len
            if extra:
                noised_ids = self._pad(noised_ids, extra)
                clean_ids = self._pad(clean_ids, extra)
                valid = torch.cat([valid, valid.new_zeros(valid.shape[0], extra)], dim=1)
        return build_layout(
            self.family, self.regime, noised_ids, clean_ids, valid, block_size=self.block_size,
            mask_token_id=self.mask_token_id, wedlm_native_form=self.wedlm_native_form,
        )

    # -- forward -------------------------------------------------------------------------------------

    @torch.inference_mode()
    def hidden_at(
        self,
        noised_ids: torch.Tensor,
        lengths: torch.Tensor,
        row_index: torch.Tensor,
        position: torch.Tensor,
        *,
        clean_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states (after the last norm) at the selected positions, shape (N, hidden)."""
        self._check(noised_ids, lengths, row_index, position, clean_ids)
        layout = self.layout(noised_ids, lengths, clean_ids)
        return layout_hidden_states(self.model, layout, row_index, position)

    def map_head(self, hidden: torch.Tensor, fn: Callable[[torch.Tensor, slice], Any]) -> Any:
        """Apply ``fn(logits_fp32 (n, V), rows slice)`` to the LM-head output of ``hidden`` (N, H) in chunks of
        ``head_chunk_size`` rows and concatenate the per-chunk results."""
        if hidden.shape[0] == 0:
            raise ValueError("no positions selected")
        parts = [fn(chunk, rows) for rows, chunk in self.iter_head(hidden)]
        return _concat_results(parts)

    @torch.inference_mode()
    def iter_head(self, hidden: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yield ``(rows, logits)`` with fp32 logits (n, V) for consecutive chunks of ``hidden`` (N, H)."""
        head = self.model.get_output_embeddings()
        for start in range(0, hidden.shape[0], self.head_chunk_size):
            rows = slice(start, min(start + self.head_chunk_size, hidden.shape[0]))
            yield rows, head(hidden[rows]).float()

    @torch.inference_mode()
    def logits_at(self, noised_ids, lengths, row_index, position, *, clean_ids=None) -> torch.Tensor:
        """Full-vocabulary fp32 logits (N, V) at the selected positions (for small N and tests)."""
        hidden = self.hidden_at(noised_ids, lengths, row_index, position, clean_ids=clean_ids)
        return self.map_head(hidden, lambda logits, rows: logits)

    @torch.inference_mode()
    def gold_logprobs(
        self,
        noised_ids: torch.Tensor,
        lengths: torch.Tensor,
        row_index: torch.Tensor,
        position: torch.Tensor,
        gold_ids: torch.Tensor,
        *,
        clean_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """log p_T(gold | noised input) over the full teacher vocabulary, fp32 (N,)."""
        if gold_ids.shape != row_index.shape:
            raise ValueError(f"gold_ids must have shape {tuple(row_index.shape)}, got {tuple(gold_ids.shape)}")
        if gold_ids.numel() and (bool((gold_ids < 0).any()) or bool((gold_ids >= self.vocab_size).any())):
            raise ValueError(f"gold_ids must lie in [0, {self.vocab_size})")
        hidden = self.hidden_at(noised_ids, lengths, row_index, position, clean_ids=clean_ids)
        gold = gold_ids.to(hidden.device).long()

        def chunk_logprob(logits: torch.Tensor, rows: slice) -> torch.Tensor:
            picked = logits.gather(1, gold[rows, None]).squeeze(1)
            return picked - torch.logsumexp(logits, dim=-1)

        return self.map_head(hidden, chunk_logprob)

    @torch.inference_mode()
    def topk_targets(
        self,
        noised_ids: torch.Tensor,
        lengths: torch.Tensor,
        row_index: torch.Tensor,
        position: torch.Tensor,
        gold_ids: torch.Tensor,
        *,
        k: int,
        shared_vocab_size: int | None = None,
        temperatures: tuple[float, ...] | list[float] = (1.0,),
        clean_ids: torch.Tensor | None = None,
        targets_fn: Callable[..., Any] | None = None,
    ) -> Any:
        """Sparse top-k targets at the selected positions via ``tide.targets.sparse_targets`` (or
        ``targets_fn`` with the same signature), computed chunk by chunk and concatenated.
        ``shared_vocab_size`` defaults to ``model.config.shared_vocab_size``."""
        if gold_ids.shape != row_index.shape:
            raise ValueError(f"gold_ids must have shape {tuple(row_index.shape)}, got {tuple(gold_ids.shape)}")
        hidden = self.hidden_at(noised_ids, lengths, row_index, position, clean_ids=clean_ids)
        return self.topk_from_hidden(hidden, gold_ids, k=k, shared_vocab_size=shared_vocab_size,
                                     temperatures=temperatures, targets_fn=targets_fn)

    @torch.inference_mode()
    def topk_from_hidden(
        self,
        hidden: torch.Tensor,
        gold_ids: torch.Tensor,
        *,
        k: int,
        shared_vocab_size: int | None = None,
        temperatures: tuple[float, ...] | list[float] = (1.0,),
        targets_fn: Callable[..., Any] | None = None,
    ) -> Any:
        """:meth:`topk_targets` from final hidden states (N, H) already gathered by :meth:`hidden_at` (a build
        that also stores those hidden states runs the teacher once)."""
        if gold_ids.shape != hidden.shape[:1]:
            raise ValueError(f"gold_ids must have shape {tuple(hidden.shape[:1])}, got {tuple(gold_ids.shape)}")
        if shared_vocab_size is None:
            shared_vocab_size = getattr(self.model.config, "shared_vocab_size", None)
        if shared_vocab_size is None:
            raise ValueError("shared_vocab_size is unknown: pass it or set config.shared_vocab_size")
        if targets_fn is None:
            from tide.targets import sparse_targets as targets_fn
        gold = gold_ids.to(hidden.device).long()

        def chunk_targets(logits: torch.Tensor, rows: slice) -> Any:
            return targets_fn(
                logits, gold[rows], k=k, shared_vocab_size=shared_vocab_size, temperatures=temperatures
            )

        return self.map_head(hidden, chunk_targets)


# --- loading ----------------------------------------------------------------------------------------------


def load_teacher(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    attn_implementation: str | None = "sdpa",
) -> PreTrainedModel:
    """Load a teacher by the ``model_type`` of its config.json: ``wedlm`` → :func:`load_wedlm` (Qwen3 with
    ``mask_token_id`` / ``shared_vocab_size`` on its config), ``llada2_moe`` → ``AutoModelForCausalLM``.
    The model is put in eval mode; dtype defaults to :func:`tide.runtime.default_dtype` of ``device``."""
    from tide.models.llada2_moe import MODEL_TYPE as LLADA2_MODEL_TYPE  # importing registers llada2_moe
    from tide.models.wedlm import WEDLM_MODEL_TYPE, load_wedlm

    raw = read_checkpoint_config(path)
    model_type = raw.get("model_type")
    kwargs = from_pretrained_kwargs(dtype, device, attn_implementation)
    if model_type == WEDLM_MODEL_TYPE:
        model = load_wedlm(path, **kwargs)
    elif model_type == LLADA2_MODEL_TYPE:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
        if getattr(model.config, "mask_token_id", None) is None:
            raise ValueError(f"{path}: the LLaDA2 config has no mask_token_id")
    else:
        raise ValueError(
            f"{path}: model_type={model_type!r} is not a supported teacher ({WEDLM_MODEL_TYPE!r}, {LLADA2_MODEL_TYPE!r})"
        )
    model.eval()
    return model.to(device) if device is not None else model


@dataclass(frozen=True)
class TeacherVocabulary:
    """What a teacher checkpoint's config says about its ids: ``model_type``, the mask id, the embedding
    rows and (WeDLM only) how many leading ids it shares with the student."""

    model_type: str
    mask_token_id: int
    vocab_size: int
    shared_vocab_size: int | None


def teacher_vocabulary(raw_config: dict[str, Any], *, where: str = "teacher") -> TeacherVocabulary:
    """Read a teacher's ids from its ``config.json`` dict, with each teacher family's defaults.

    WeDLM's release may omit ``mask_token_id`` / ``shared_vocab_size`` (the defaults of
    :mod:`tide.models.wedlm` apply); the upstream LLaDA2 config omits ``mask_token_id``, and the loaded model
    then carries its config class default, so that is the id to record. Raises ValueError naming ``where``.
    """
    from tide.models.llada2_moe import MODEL_TYPE as LLADA2_MODEL_TYPE
    from tide.models.llada2_moe import LLaDA2MoeConfig
    from tide.models.wedlm import (
        DEFAULT_WEDLM_MASK_TOKEN_ID,
        DEFAULT_WEDLM_SHARED_VOCAB_SIZE,
        WEDLM_MODEL_TYPE,
    )

    model_type = raw_config.get("model_type")
    mask_id = raw_config.get("mask_token_id")
    shared = None
    if model_type == WEDLM_MODEL_TYPE:
        mask_id = DEFAULT_WEDLM_MASK_TOKEN_ID if mask_id is None else mask_id
        shared = raw_config.get("shared_vocab_size") or DEFAULT_WEDLM_SHARED_VOCAB_SIZE
    elif model_type == LLADA2_MODEL_TYPE and mask_id is None:
        mask_id = LLaDA2MoeConfig().mask_token_id
    if mask_id is None:
        raise ValueError(f"{where}: config.json has no mask_token_id")
    if "vocab_size" not in raw_config:
        raise ValueError(f"{where}: config.json has no vocab_size")
    return TeacherVocabulary(str(model_type), int(mask_id), int(raw_config["vocab_size"]),
                             None if shared is None else int(shared))
