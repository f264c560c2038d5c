"""lm-eval model ``tide_bd3lm``: block-diffusion generation through ``tide.sampler``.

Only ``generate_until`` is supported. A masked-diffusion student has no left-to-right likelihood, so
``loglikelihood`` and ``loglikelihood_rolling`` raise ``NotImplementedError`` naming the task types that
need them (multiple-choice and perplexity tasks); use the generative variants (e.g. ``mmlu_generative_dream``,
``hellaswag_gen``) instead.

``--model_args``: ``pretrained=PATH`` (required), ``block_size=32``, ``steps=256``, ``gen_length=256``,
``cfg_scale=0``, ``remasking=low_confidence|random``, ``temperature=0``, ``think_block=auto|never``,
``batch_size=1``, ``seed=1234``, ``dtype=auto|float32|bfloat16|float16``, ``device=cuda|cpu``,
``max_length`` (default: the model's ``max_position_embeddings``).

Per request the generation length is ``min(gen_length, max_gen_toks)``; when the task's ``max_gen_toks``
is the smaller, the steps shrink in proportion (never below one per block). Generation stops at the
sampler's stop tokens (EOS, the pad token and ChatML's ``<|im_end|>`` where the vocabulary has them, as
the original stopped at EOS or its end-of-turn token); the decoded answer loses its think blocks and is
cut at the first ``until`` string (lm-eval adds the EOS string). Chat templates are rendered with
``enable_thinking=False`` and the think-block rule of :mod:`stages.eval.think` (``think_block=auto``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from stages.eval.protocol import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_CFG_SCALE,
    DEFAULT_REMASKING,
    DEFAULT_TEMPERATURE,
)
from stages.eval.think import (
    ABSENT,
    THINK_MODES,
    THINK_TAGS,
    ThinkRecord,
    place_think_block,
    strip_think_blocks,
)
from stages.provenance import weights_fingerprint
from tide.runtime import resolve_device, resolve_dtype
from tide.sampler import BlockDiffusionSampler, SamplerConfig

logger = logging.getLogger(__name__)

MODEL_NAME = "tide_bd3lm"
END_OF_TURN = "<|im_end|>"  # ChatML's end-of-turn token: a stop token wherever the vocabulary has it
_LENGTH_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")


def _as_int(name: str, value: Any) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"model argument {name}={value!r} is not an integer") from None
    if isinstance(value, bool) or number != int(number):
        raise ValueError(f"model argument {name}={value!r} is not an integer")
    return int(number)


def _as_float(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"model argument {name}={value!r} is not a number") from None


def load_checkpoint(
    path: str | os.PathLike, *, device: torch.device, dtype: torch.dtype
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Load a student checkpoint directory (``save_pretrained`` layout) and its tokenizer, in eval mode.

    The model loads through :func:`tide.models.student.load_student` (the one student loader) with SDPA
    attention, which takes the sampler's 4-D masks; a LoRA adapter directory loads as its base student with
    the adapters merged."""
    from transformers import AutoTokenizer

    from tide.models.student import is_adapter_directory, load_student

    root = Path(path)
    if not (root / "config.json").is_file() and not is_adapter_directory(root):
        raise FileNotFoundError(f"pretrained={root}: not a checkpoint directory (no config.json) nor a LoRA "
                                "adapter directory (no adapter_config.json)")
    tokenizer = AutoTokenizer.from_pretrained(str(root))
    model = load_student(root, dtype=dtype, device=device, attn_implementation="sdpa")
    return model.eval(), tokenizer


@register_model(MODEL_NAME)
class TideBD3LM(LM):
    """lm-eval wrapper around ``BlockDiffusionSampler`` (see the module docstring for its arguments)."""

    def __init__(
        self,
        pretrained: str,
        block_size: int = DEFAULT_BLOCK_SIZE,
        steps: int = 256,
        gen_length: int = 256,
        cfg_scale: float = DEFAULT_CFG_SCALE,
        remasking: str = DEFAULT_REMASKING,
        temperature: float = DEFAULT_TEMPERATURE,
        think_block: str = "auto",
        batch_size: int | str = 1,
        seed: int = 1234,
        dtype: str = "auto",
        device: str | None = None,
        max_length: int | None = None,
        max_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if not pretrained:
            raise ValueError("model argument pretrained=PATH is required")
        if str(batch_size).startswith("auto"):
            raise ValueError("batch_size=auto is not supported by tide_bd3lm; give an integer")
        self.batch_size = _as_int("batch_size", batch_size)
        if self.batch_size < 1:
            raise ValueError(f"model argument batch_size={batch_size!r} must be >= 1")
        if think_block not in THINK_MODES:
            raise ValueError(f"model argument think_block={think_block!r} must be one of {THINK_MODES}")
        self.think_block = str(think_block)
        self.think_record = ThinkRecord(self.think_block)
        self.checkpoint = str(pretrained)
        self._device = resolve_device(device)
        model, tokenizer = load_checkpoint(
            self.checkpoint, device=self._device, dtype=resolve_dtype(dtype, self._device)
        )
        self.model = model
        self.tokenizer = tokenizer
        self.fingerprint = weights_fingerprint(self.checkpoint)
        if self.fingerprint is None:
            raise FileNotFoundError(f"pretrained={self.checkpoint}: no *.safetensors or *.bin weight files")
        if tokenizer.mask_token_id is None:
            raise ValueError(f"tokenizer of {self.checkpoint} has no mask token; a diffusion student needs one")
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer of {self.checkpoint} has no EOS token")
        stops = [tokenizer.eos_token_id]
        if tokenizer.pad_token_id is not None:
            stops.append(tokenizer.pad_token_id)
        vocabulary = tokenizer.get_vocab()
        end_of_turn = vocabulary.get(END_OF_TURN)
        if end_of_turn is not None and end_of_turn not in stops:
            stops.append(end_of_turn)
        # special ids a decoded answer drops; the think tags stay so their blocks can be removed as text
        # (a tokenizer may register them as special, Qwen3's does not)
        think_ids = {vocabulary.get(tag) for tag in THINK_TAGS}
        self._dropped_ids = frozenset(tokenizer.all_special_ids) - think_ids
        self.sampler = BlockDiffusionSampler(
            model,
            mask_token_id=tokenizer.mask_token_id,
            stop_token_ids=stops,
            pad_token_id=tokenizer.pad_token_id,
        )
        self.max_length = (
            _as_int("max_length", max_length)
            if max_length is not None
            else int(getattr(model.config, "max_position_embeddings", 32768))
        )
        self.chat_template_applied = False
        self.configure(
            block_size=block_size,
            steps=steps,
            gen_length=gen_length,
            cfg_scale=cfg_scale,
            remasking=remasking,
            temperature=temperature,
            seed=seed,
        )

    # ------------------------------------------------------------------ settings
    def configure(self, **settings: Any) -> None:
        """Change generation settings between tasks without reloading the model (validated at once)."""
        current = getattr(self, "settings", None)
        merged = dict(current.__dict__) if current is not None else {}
        converters = {
            "block_size": _as_int, "steps": _as_int, "gen_length": _as_int, "seed": _as_int,
            "cfg_scale": _as_float, "temperature": _as_float,
        }
        for key, value in settings.items():
            if key == "remasking":
                merged[key] = str(value)
            elif key in converters:
                merged[key] = converters[key](key, value)
            else:
                raise ValueError(f"unknown generation setting {key!r}")
        self.settings = SamplerConfig(**merged)

    def get_model_info(self) -> dict[str, Any]:
        """Merged by lm-eval into ``results['config']``."""
        s = self.settings
        return {
            "tide_checkpoint": str(Path(self.checkpoint).resolve()),
            "tide_weights_fingerprint": self.fingerprint,
            "tide_generation": {
                "block_size": s.block_size, "steps": s.steps, "gen_length": s.gen_length,
                "remasking": s.remasking, "temperature": s.temperature, "cfg_scale": s.cfg_scale,
                "seed": s.seed, "think_block": self.think_block,
            },
        }

    # ------------------------------------------------------------------ lm-eval hooks
    @property
    def tokenizer_name(self) -> str:
        return str(Path(self.checkpoint).resolve()).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.tokenizer.chat_template

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The chat as a context: the generation prompt, or (lm-eval's ``gen_prefix``) a final assistant
        message continued; with ``think_block=auto`` rendered with ``enable_thinking=False`` and given the
        empty think block where it lacks one (:func:`stages.eval.think.place_think_block`)."""
        self.chat_template_applied = True
        extra = {"enable_thinking": False} if self.think_block == "auto" else {}
        rendered = self.tokenizer.apply_chat_template(
            chat_history,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
            **extra,
        )
        if self.think_block == "auto":
            final = None if add_generation_prompt else str(chat_history[-1]["content"])
            rendered, outcome = place_think_block(rendered, final)
        else:
            outcome = ABSENT
        self.think_record.outcomes[outcome] += 1
        return rendered

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            f"{MODEL_NAME} does not compute log-likelihoods: a block-diffusion student has no left-to-right "
            "likelihood, so multiple-choice (loglikelihood) tasks are not supported; use a generative variant "
            "(e.g. mmlu_generative_dream, hellaswag_gen)"
        )

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            f"{MODEL_NAME} does not compute rolling log-likelihoods (perplexity tasks such as wikitext are "
            "not supported by a block-diffusion student)"
        )

    # ------------------------------------------------------------------ generation
    def request_config(self, gen_kwargs: dict[str, Any]) -> tuple[SamplerConfig, list[str]]:
        """Sampler settings and stop strings for one request's ``gen_kwargs``."""
        if not isinstance(gen_kwargs, dict):
            raise ValueError(f"generate_until expects gen_kwargs as a dict, got {type(gen_kwargs).__name__}")
        until = gen_kwargs.get("until")
        until = handle_stop_sequences(list(until) if isinstance(until, list) else until, eos=self.tokenizer.eos_token)
        s = self.settings
        limit = next((gen_kwargs[k] for k in _LENGTH_KEYS if gen_kwargs.get(k) is not None), None)
        gen_length = s.gen_length if limit is None else min(s.gen_length, _as_int("max_gen_toks", limit))
        steps = s.steps
        if gen_length < s.gen_length:
            blocks = -(-gen_length // s.block_size)
            steps = max(blocks, s.steps * gen_length // s.gen_length)
        config = SamplerConfig(
            block_size=s.block_size, steps=steps, gen_length=gen_length, remasking=s.remasking,
            temperature=s.temperature, cfg_scale=s.cfg_scale, seed=s.seed,
        )
        return config, [stop for stop in until if stop]

    def encode_prompt(self, context: str, gen_length: int) -> list[int]:
        """Token ids of a context, left-truncated to fit."""
        ids = self.tokenizer(context, add_special_tokens=False)["input_ids"]
        room = self.max_length - gen_length
        if len(ids) > room:
            logger.warning("context of %d tokens truncated from the left to %d", len(ids), room)
            ids = ids[len(ids) - room:]
        return ids

    def decode(self, ids: list[int], until: list[str]) -> str:
        """The answer: decoded, think blocks removed, cut at the earliest stop string (the original's order)."""
        kept = [i for i in ids if i not in self._dropped_ids]
        text = strip_think_blocks(self.tokenizer.decode(kept, skip_special_tokens=False))
        cut = min((i for i in (text.find(stop) for stop in until) if i >= 0), default=len(text))
        return text[:cut]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        prepared = []
        for index, request in enumerate(requests):
            context, gen_kwargs = request.args
            config, until = self.request_config(gen_kwargs)
            prepared.append((index, self.encode_prompt(context, config.gen_length), config, until))
        groups: dict[tuple, list[tuple]] = {}
        for item in prepared:
            key = (item[2], tuple(item[3]))
            groups.setdefault(key, []).append(item)
        outputs: list[str | None] = [None] * len(prepared)
        progress = tqdm(total=len(prepared), disable=disable_tqdm or self.rank != 0, desc="tide_bd3lm")
        for (config, until), items in groups.items():
            items.sort(key=lambda item: -len(item[1]))
            for start in range(0, len(items), self.batch_size):
                chunk = items[start:start + self.batch_size]
                result = self.sampler.generate([item[1] for item in chunk], config)
                for item, ids in zip(chunk, result.sequences, strict=True):
                    text = self.decode(ids, list(until))
                    outputs[item[0]] = text
                    self.cache_hook.add_partial("generate_until", requests[item[0]].args, text)
                progress.update(len(chunk))
        progress.close()
        return [text if text is not None else "" for text in outputs]
