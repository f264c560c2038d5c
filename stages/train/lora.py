"""A LoRA student through ``peft`` (the optional ``lora`` extra).

The adapters are injected into the student's own modules, so the training step, the BD3LM forward and
the losses are the full student's, unchanged; only the adapter matrices require gradients. At the end the
adapters are saved on their own (``<output>/adapter``: ``adapter_config.json``, ``adapter_model.safetensors``
and the tokenizer, loadable by ``tide-eval`` on top of the base student), and merged into the base weights
for the student saved in ``<output>`` itself (W = W0 + (alpha / r) · B · A).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from torch import nn

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"


class LoraError(ValueError):
    """The LoRA options cannot be applied to this student (missing package, unknown target module)."""


def require_peft() -> None:
    if importlib.util.find_spec("peft") is None:
        raise LoraError("--lora-r needs the peft package: pip install 'tide-offline[lora]' (or pip install peft)")


def apply_lora(model: nn.Module, *, r: int, alpha: float, dropout: float, targets: list[str],
               base_path: str | os.PathLike) -> Any:
    """Inject adapters into ``model`` in place and freeze everything else; return the peft wrapper (kept for
    saving and merging — train ``model`` itself)."""
    require_peft()
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise LoraError(f"--lora-targets {','.join(unknown)}: no linear module of that name in the student "
                        f"(it has {', '.join(sorted(names))})")
    base = Path(base_path)
    lora_config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                             bias="none", base_model_name_or_path=str(base.resolve()) if base.exists() else str(base))
    wrapper = get_peft_model(model, lora_config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("LoRA r=%d alpha=%g on %s: %d of %d parameters train (%.3f%%)", r, alpha, ",".join(targets),
                trainable, total, 100.0 * trainable / max(total, 1))
    return wrapper


def save_adapters_and_merge(wrapper: Any, output: Path, tokenizer: Any) -> nn.Module:
    """Save the adapters under ``output/adapter`` (with the tokenizer) and return the merged student (the
    wrapper's model with the adapters folded into its weights and the peft layers removed)."""
    adapter_dir = output / ADAPTER_DIR
    wrapper.save_pretrained(str(adapter_dir))
    tokenizer.save_pretrained(str(adapter_dir))
    logger.info("LoRA adapters saved to %s", adapter_dir)
    return wrapper.merge_and_unload()
