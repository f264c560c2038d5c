"""Handing the trained student over: the portable save, its model card, and the Hub upload.

:func:`save_student` writes ``<output>`` as a model anyone can load: ``save_pretrained`` weights and
config, the tokenizer, and for the ``a2d-qwen3`` type the self-contained modeling file with ``auto_map``
(:func:`tide.models.a2d_qwen3.make_portable`), so stock ``AutoModelForCausalLM.from_pretrained`` loads it
with ``trust_remote_code=True`` anywhere, and without remote code after ``import tide``. The model card
(``README.md``) records what the student was trained on: mode, the cache manifest's fingerprint, the
teacher, the steps and the final losses. :func:`push_to_hub` uploads the directory (not its checkpoints
or logs) through ``huggingface_hub``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tide.models.a2d_qwen3 import make_portable
from tide.models.model_types import A2D_QWEN3_MODEL_TYPE

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
# What an upload leaves out: resumable state and logs stay on the training machine.
UPLOAD_IGNORE = ["checkpoints/*", "logs/*", "run.json", ".tmp-*"]


@dataclass
class CardFacts:
    """What the model card states about the run."""

    mode: str
    comp_demo: bool
    temperature: float | None
    pipeline: str
    cache_fingerprint: str
    teacher: str
    teacher_weights: str | None
    base_student: str
    steps: int
    total_steps: int
    final_losses: dict[str, float] = field(default_factory=dict)
    lora: str | None = None


def model_card(facts: CardFacts) -> str:
    """The card's Markdown, with the Hub's YAML metadata block first."""
    losses = "\n".join(f"| {name} | {value:.6g} |" for name, value in sorted(facts.final_losses.items()))
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [tide, block-diffusion, bd3lm, distillation]",
        "---",
        "",
        "# TIDE block-diffusion student",
        "",
        "Distilled with TIDE offline (`tide-train`) from a logits cache; it generates block by block with",
        "`tide-eval generate`, and loads with `AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`",
        "(or without remote code after `import tide`).",
        "",
        "| fact | value |",
        "|---|---|",
        f"| mode | `{facts.mode}`{' with CompDemo targets' if facts.comp_demo else ''} |",
        f"| distillation temperature | {facts.temperature if facts.temperature is not None else 'none (ce)'} |",
        f"| cache pipeline | {facts.pipeline} |",
        f"| cache manifest fingerprint | `{facts.cache_fingerprint}` |",
        f"| teacher | {facts.teacher} |",
        f"| teacher weights fingerprint | `{facts.teacher_weights or 'not recorded'}` |",
        f"| base student | {facts.base_student} |",
        f"| optimizer steps | {facts.steps} of {facts.total_steps} |",
    ]
    if facts.lora:
        lines.append(f"| LoRA | {facts.lora} (merged; adapters in `adapter/`) |")
    lines += ["", "## Final training losses", "", "| term | value |", "|---|---|", losses or "| (none logged) | |", ""]
    return "\n".join(lines)


def save_student(model: Any, tokenizer: Any, output: Path, *, state_dict: dict | None = None,
                 save_function: Any = None) -> None:
    """``save_pretrained`` of model and tokenizer into ``output``, made portable for ``a2d-qwen3``."""
    kwargs = {} if state_dict is None else {"state_dict": state_dict}
    if save_function is not None:
        kwargs["save_function"] = save_function
    model.save_pretrained(str(output), **kwargs)
    tokenizer.save_pretrained(str(output))
    if getattr(model.config, "model_type", None) == A2D_QWEN3_MODEL_TYPE:
        make_portable(output)
    logger.info("trained student saved to %s", output)


def write_model_card(output: Path, facts: CardFacts) -> Path:
    path = output / CARD_FILE
    path.write_text(model_card(facts), encoding="utf-8")
    return path


def push_to_hub(output: Path, repo_id: str, *, private: bool, api: Any = None) -> str:
    """Create ``repo_id`` if needed and upload ``output`` (checkpoints and logs left out); returns the
    commit URL or id. ``api`` is a ``huggingface_hub.HfApi`` (default: a new one, which reads the token from
    the environment or the login cache)."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(output), repo_type="model",
                               commit_message="tide-train: trained student", ignore_patterns=UPLOAD_IGNORE)
    logger.info("uploaded %s to the Hub as %s", output, repo_id)
    return str(getattr(commit, "commit_url", commit))
