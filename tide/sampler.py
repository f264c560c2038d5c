"""Block-diffusion (BD3LM) generation with a KV cache of finished blocks (docs/design.md#generation).

Layout. Prompts are left-padded to a common length P that is a multiple of the block size b, so the
generated region starts on a block boundary for every row. Pad keys are masked out of attention, and
position ids count real tokens only (the first real token of every row is position 0), so a prompt yields
the same computation alone or inside a batch of longer and shorter prompts.

Generation. The region of ``gen_length`` tokens is cut into blocks of b tokens (the last one shorter when
``gen_length`` is not a multiple of b). For each block:

1. b mask tokens are appended; they attend to every valid cached key and to each other (bidirectional
   inside the block);
2. ``steps_per_block = steps // num_blocks`` denoising steps follow (at most one per token of the block);
   step s commits ``schedule[s]`` tokens, the block length split as evenly as possible over the steps,
   larger shares first (``transfer_schedule``); the committed positions are the most confident masked
   ones (``low_confidence``) or random masked ones (``random``); tokens are chosen by argmax
   (temperature 0) or Gumbel-max sampling at the given temperature;
3. the finished block is run once more, clean, so its keys and values join the cache (block-causal: the
   block sees the prefix and itself).

The prompt fills the cache first with the block-causal mask (the clean half of the BD3LM training mask).
A row stops after a block that contains one of its stop tokens; the batch stops when every row has
stopped. With ``cfg_scale > 0`` every step also runs the unconditional input (prompt tokens replaced by
the mask token) and mixes ``uncond + (cfg_scale + 1) * (cond - uncond)``.

``use_kv_cache=False`` recomputes the whole prefix at every step with the equivalent full mask; it exists
as the reference the cached path is tested against.

The model is any transformers causal-LM-style module whose forward takes ``input_ids``, a 4-D
``attention_mask`` used as given (additive float, shape (B, 1, q, k)), ``position_ids`` and a
``DynamicCache``, and returns ``.logits`` where position i predicts token i (no shift).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from tide.bd3lm import block_causal_bool_mask, bool_to_additive, with_key_padding

logger = logging.getLogger(__name__)

REMASKING_STRATEGIES = ("low_confidence", "random")
SUPPORTED_ATTENTION = ("sdpa", "eager")


@dataclass(frozen=True)
class SamplerConfig:
    """Generation settings; see the module docstring for their meaning."""

    block_size: int = 32
    steps: int = 256
    gen_length: int = 256
    remasking: str = "low_confidence"
    temperature: float = 0.0
    cfg_scale: float = 0.0
    seed: int = 0
    use_kv_cache: bool = True
    record_trace: bool = False

    def __post_init__(self) -> None:
        for name in ("block_size", "steps", "gen_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SamplerConfig.{name} must be a positive integer, got {value!r}")
        if self.remasking not in REMASKING_STRATEGIES:
            raise ValueError(
                f"SamplerConfig.remasking must be one of {REMASKING_STRATEGIES}, got {self.remasking!r}"
            )
        if self.temperature < 0:
            raise ValueError(f"SamplerConfig.temperature must be >= 0, got {self.temperature}")
        if self.cfg_scale < 0:
            raise ValueError(f"SamplerConfig.cfg_scale must be >= 0, got {self.cfg_scale}")
        if self.steps < self.num_blocks:
            raise ValueError(
                f"SamplerConfig.steps={self.steps} is smaller than the number of blocks {self.num_blocks} "
                f"(gen_length={self.gen_length}, block_size={self.block_size}); every block needs a step"
            )

    @property
    def num_blocks(self) -> int:
        return -(-self.gen_length // self.block_size)

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks

    def block_plan(self) -> list[tuple[int, int, list[int]]]:
        """(start offset in the generated region, block length, tokens committed per step) per block."""
        plan = []
        for index in range(self.num_blocks):
            start = index * self.block_size
            length = min(self.block_size, self.gen_length - start)
            plan.append((start, length, transfer_schedule(length, self.steps_per_block)))
        return plan


def transfer_schedule(num_tokens: int, steps: int) -> list[int]:
    """Split ``num_tokens`` over at most ``steps`` steps as evenly as possible, larger shares first.

    More steps than tokens would only add steps that commit nothing (which cannot change a result), so the
    number of steps is capped at ``num_tokens``: ``transfer_schedule(32, 5) == [7, 7, 6, 6, 6]``,
    ``transfer_schedule(3, 8) == [1, 1, 1]``.
    """
    if num_tokens < 1 or steps < 1:
        raise ValueError(f"transfer_schedule needs num_tokens >= 1 and steps >= 1, got {num_tokens}, {steps}")
    steps = min(steps, num_tokens)
    base, extra = divmod(num_tokens, steps)
    return [base + 1] * extra + [base] * (steps - extra)


@dataclass
class StepTrace:
    """One denoising step: which generated positions (offsets from the start of the generated region)
    each row committed, and the tokens written there."""

    block: int
    step: int
    num_committed: int
    positions: list[list[int]]
    tokens: list[list[int]]


@dataclass
class GenerationOutput:
    """``sequences``: generated ids per prompt, cut before the first stop token. ``tokens``: the raw
    generated region (B, gen_length), mask id where a block was never run. ``stopped``: whether the row
    met a stop token. ``blocks_run``: blocks generated for the batch."""

    sequences: list[list[int]]
    tokens: torch.Tensor
    stopped: list[bool]
    blocks_run: int
    trace: list[StepTrace] = field(default_factory=list)


class BlockDiffusionSampler:
    """Block-wise masked-diffusion generation for one model and its special tokens."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        mask_token_id: int,
        stop_token_ids: Sequence[int],
        pad_token_id: int | None = None,
    ) -> None:
        if mask_token_id is None or mask_token_id < 0:
            raise ValueError(f"mask_token_id must be a valid token id, got {mask_token_id!r}")
        if not stop_token_ids:
            raise ValueError("stop_token_ids is empty: generation needs at least one stop (EOS) token")
        attn = getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"
        if attn not in SUPPORTED_ATTENTION:
            raise ValueError(
                f"model attention implementation {attn!r} cannot take the block-diffusion 4-D mask; "
                f"load the model with attn_implementation in {SUPPORTED_ATTENTION}"
            )
        self.model = model
        self.mask_token_id = int(mask_token_id)
        self.stop_token_ids = sorted({int(t) for t in stop_token_ids})
        self.pad_token_id = int(pad_token_id) if pad_token_id is not None else self.stop_token_ids[0]
        parameter = next(model.parameters())
        self.device = parameter.device
        self.dtype = parameter.dtype
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = (
            "past_key_values" if "past_key_values" in params and "cache" not in params else "cache"
        )

    # ------------------------------------------------------------------ model calls
    def _forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        allowed: torch.Tensor,
        cache: DynamicCache | None,
    ) -> torch.Tensor:
        """Run the model; ``allowed`` (B, q, k) is the boolean attend-mask. Returns logits (B, q, V)."""
        mask = bool_to_additive(allowed[:, None], self.dtype)
        kwargs = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "position_ids": position_ids,
            "use_cache": cache is not None,
        }
        if cache is not None:
            kwargs[self._cache_kwarg] = cache
        return self.model(**kwargs).logits

    # ------------------------------------------------------------------ token choice
    def _choose(
        self, logits: torch.Tensor, config: SamplerConfig, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidate tokens and their confidence, both (B, q)."""
        logits = logits.float()
        # A mask token is never a valid commitment.
        logits[..., self.mask_token_id] = float("-inf")
        if config.temperature > 0:
            uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64)
            gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-300)))
            candidates = (logits.double() / config.temperature + gumbel).argmax(dim=-1)
        else:
            candidates = logits.argmax(dim=-1)
        if config.remasking == "low_confidence":
            probs = torch.softmax(logits, dim=-1)
            confidence = probs.gather(-1, candidates[..., None]).squeeze(-1)
        else:
            confidence = torch.rand(candidates.shape, generator=generator, device=logits.device)
        return candidates, confidence

    def _mix_cfg(self, logits: torch.Tensor, config: SamplerConfig, batch: int) -> torch.Tensor:
        if config.cfg_scale <= 0:
            return logits
        cond, uncond = logits[:batch].float(), logits[batch:].float()
        return uncond + (config.cfg_scale + 1.0) * (cond - uncond)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], config: SamplerConfig) -> GenerationOutput:
        """Generate for a batch of prompts (token id lists of any lengths)."""
        if len(prompts) == 0:
            raise ValueError("prompts is empty")
        b = config.block_size
        batch = len(prompts)
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        padded = -(-int(lengths.max()) // b) * b
        prompt_ids = torch.full((batch, padded), self.pad_token_id, dtype=torch.long, device=self.device)
        valid = torch.zeros((batch, padded), dtype=torch.bool, device=self.device)
        for row, prompt in enumerate(prompts):
            if len(prompt):
                prompt_ids[row, padded - len(prompt):] = torch.as_tensor(list(prompt), device=self.device)
                valid[row, padded - len(prompt):] = True
        prompt_pos = (valid.long().cumsum(dim=1) - 1).clamp_min(0)
        if config.cfg_scale > 0:
            unconditional = torch.where(valid, torch.full_like(prompt_ids, self.mask_token_id), prompt_ids)
            prompt_ids = torch.cat([prompt_ids, unconditional])
            valid = torch.cat([valid, valid])
            prompt_pos = torch.cat([prompt_pos, prompt_pos])
            lengths = torch.cat([lengths, lengths])
        rows = prompt_ids.shape[0]

        generator = torch.Generator(device=self.device).manual_seed(config.seed)
        tokens = torch.full((batch, config.gen_length), self.mask_token_id, dtype=torch.long, device=self.device)
        stopped = torch.zeros(batch, dtype=torch.bool, device=self.device)
        stop_ids = torch.tensor(self.stop_token_ids, device=self.device)
        trace: list[StepTrace] = []

        cache = DynamicCache() if config.use_kv_cache else None
        if cache is not None and padded > 0:
            self._forward(prompt_ids, prompt_pos, _block_causal(valid, b), cache)
        cached_valid = valid

        plan = config.block_plan()
        blocks_run = 0
        for block_index, (start, length, schedule) in enumerate(plan):
            block = torch.full((rows, length), self.mask_token_id, dtype=torch.long, device=self.device)
            block_pos = lengths[:, None] + start + torch.arange(length, device=self.device)
            for step, count in enumerate(schedule):
                if cache is not None:
                    allowed = _prefix_and_block(cached_valid, length)
                    logits = self._forward(block, block_pos, allowed, cache)
                    cache.crop(-length)
                else:
                    logits = self._full_forward(prompt_ids, prompt_pos, valid, tokens, start, block, block_pos, config)
                logits = self._mix_cfg(logits, config, batch)
                candidates, confidence = self._choose(logits, config, generator)
                still_masked = block[:batch] == self.mask_token_id
                confidence = confidence.masked_fill(~still_masked, float("-inf"))
                chosen = confidence.topk(count, dim=-1).indices
                committed = candidates.gather(1, chosen)
                block[:batch].scatter_(1, chosen, committed)
                if config.cfg_scale > 0:
                    block[batch:] = block[:batch]
                if config.record_trace:
                    order = chosen.argsort(dim=-1)
                    trace.append(
                        StepTrace(
                            block=block_index,
                            step=step,
                            num_committed=count,
                            positions=(chosen.gather(1, order) + start).tolist(),
                            tokens=committed.gather(1, order).tolist(),
                        )
                    )
            tokens[:, start:start + length] = block[:batch]
            blocks_run += 1
            stopped |= torch.isin(block[:batch], stop_ids).any(dim=-1)
            if bool(stopped.all()) or block_index == len(plan) - 1:
                break
            if cache is not None:
                self._forward(block, block_pos, _prefix_and_block(cached_valid, length), cache)
                cached_valid = torch.cat([cached_valid, torch.ones_like(block, dtype=torch.bool)], dim=1)

        sequences = [_cut_at_stop(row, self.stop_token_ids) for row in tokens.tolist()]
        return GenerationOutput(
            sequences=sequences,
            tokens=tokens.cpu(),
            stopped=stopped.tolist(),
            blocks_run=blocks_run,
            trace=trace,
        )

    def _full_forward(
        self,
        prompt_ids: torch.Tensor,
        prompt_pos: torch.Tensor,
        valid: torch.Tensor,
        tokens: torch.Tensor,
        start: int,
        block: torch.Tensor,
        block_pos: torch.Tensor,
        config: SamplerConfig,
    ) -> torch.Tensor:
        """Reference path: the whole prefix recomputed, logits of the current block (rows, q, V)."""
        rows = prompt_ids.shape[0]
        finished = tokens[:, :start]
        if rows != tokens.shape[0]:
            finished = torch.cat([finished, finished])
        length = block.shape[1]
        ids = torch.cat([prompt_ids, finished, block], dim=1)
        gen_pos = block_pos[:, :1] - start + torch.arange(start + length, device=self.device)
        pos = torch.cat([prompt_pos, gen_pos], dim=1)
        key_valid = torch.cat([valid, torch.ones((rows, start + length), dtype=torch.bool, device=self.device)], 1)
        logits = self._forward(ids, pos, _block_causal(key_valid, config.block_size), None)
        return logits[:, -length:]


def _block_causal(key_valid: torch.Tensor, block_size: int) -> torch.Tensor:
    """(B, L, L) attend-mask: the clean half of the BD3LM rule (block-causal), valid keys only, plus the
    diagonal so that a pad query never has an empty row."""
    causal = block_causal_bool_mask(key_valid.shape[1], block_size, device=key_valid.device)
    return with_key_padding(causal, key_valid)


def _prefix_and_block(prefix_valid: torch.Tensor, length: int) -> torch.Tensor:
    """(B, q, P + q) attend-mask of a block of q queries over the cached prefix and itself."""
    rows = prefix_valid.shape[0]
    prefix = prefix_valid[:, None, :].expand(rows, length, prefix_valid.shape[1])
    own = torch.ones((rows, length, length), dtype=torch.bool, device=prefix_valid.device)
    return torch.cat([prefix, own], dim=-1)


def _cut_at_stop(ids: list[int], stop_token_ids: Sequence[int]) -> list[int]:
    stops = set(stop_token_ids)
    for index, token in enumerate(ids):
        if token in stops:
            return ids[:index]
    return ids
