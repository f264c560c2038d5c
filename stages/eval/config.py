"""Options of ``tide-eval run`` and ``tide-eval generate``: one dataclass each over the shared sampler settings.

The defaults are the evaluation protocol's (``stages.eval.protocol``, docs/design.md#evaluation-protocol): block 32, CFG 0,
low-confidence remasking, greedy decoding, chat template on with the original's think-block rule, and
lm-eval's default bootstrap iterations so every score carries a standard error.
"""

from __future__ import annotations

from dataclasses import dataclass

from stages.eval.protocol import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_BOOTSTRAP_ITERS,
    DEFAULT_CFG_SCALE,
    DEFAULT_REMASKING,
    DEFAULT_TEMPERATURE,
    resolve_tasks,
)
from stages.eval.think import THINK_BLOCK, THINK_MODES
from stages.options import OptionsError, option
from tide.runtime import DTYPE_CHOICES
from tide.sampler import REMASKING_STRATEGIES

_GENERATION = "generation (tide.sampler)"


@dataclass
class GenerationConfig:
    """The student and the sampler settings shared by both subcommands."""

    model: str = option("", group=_GENERATION, help="student checkpoint directory (save_pretrained layout); required")
    block_size: int = option(DEFAULT_BLOCK_SIZE, group=_GENERATION,
                             help="tokens per diffusion block; prompts are left-padded to a multiple of it")
    remasking: str = option(DEFAULT_REMASKING, group=_GENERATION, choices=REMASKING_STRATEGIES,
                            help="which masked positions a step commits: the most confident or random ones")
    sampling_temperature: float = option(
        DEFAULT_TEMPERATURE, group=_GENERATION, former=("temperature",),
        help="sampling temperature: 0 = greedy (argmax); > 0 = Gumbel-max sampling at this temperature",
    )
    cfg_scale: float = option(DEFAULT_CFG_SCALE, group=_GENERATION,
                              help="classifier-free guidance scale; unconditional input = prompt masked")
    seed: int = option(1234, group=_GENERATION, help="seed of the sampler's noise and of lm-eval")
    think_block: str = option("auto", group=_GENERATION, choices=THINK_MODES,
                              help=f"auto: render chat templates with enable_thinking=False and give a context "
                                   f"that lacks it the empty think block {THINK_BLOCK!r} where the template would "
                                   "put it (never inside a code prefix), as the original harness; never: the "
                                   "template's default, nothing inserted. Think blocks are always removed from "
                                   "answers")
    batch_size: int = option(1, group=_GENERATION, help="prompts generated together")
    device: str | None = option(None, group=_GENERATION, help="cuda, cuda:N or cpu (default: cuda when available)")
    dtype: str = option("auto", group=_GENERATION, choices=DTYPE_CHOICES,
                        help="model dtype (auto = bfloat16 on GPU, float32 on CPU)")

    def problems(self) -> list[str]:
        """Problems found before any model is loaded (the sampler checks its own settings when built)."""
        return [] if self.model else ["--model is required"]

    def validate(self) -> GenerationConfig:
        """Raise :class:`OptionsError` listing every problem; else return self."""
        found = self.problems()
        if found:
            raise OptionsError(found)
        return self


@dataclass
class RunConfig(GenerationConfig):
    """``tide-eval run``: benchmarks through lm-eval."""

    tasks: str = option("all", help="`all` (the eight paper benchmarks) or a comma-separated list of lm-eval task "
                                    "names; paper tasks use their protocol gen length/steps/shots, others "
                                    "256/256/0-shot")
    output: str = option("", help="output directory: <task>/results.json, samples.jsonl; required")
    limit: float | None = option(None, metavar="N", help="evaluate only the first N documents per (sub)task (N < 1: a "
                                            "fraction); for testing")
    chat_template: bool = option(True, help="apply the tokenizer's chat template (few-shot examples as multi-turn)")
    include_path: list[str] = option(default_factory=list, metavar="DIR",
                                     help="extra directory of lm-eval task YAMLs (repeatable)")
    confirm_run_unsafe_code: bool = option(False, help="allow tasks that execute generated code "
                                                       "(humaneval_instruct, mbpp_instruct)")
    bootstrap_iters: int = option(DEFAULT_BOOTSTRAP_ITERS,
                                  help="lm-eval bootstrap iterations for standard errors (mean metrics use the "
                                       "closed form at no cost; 0: no standard errors)")

    def problems(self) -> list[str]:
        found = super().problems()
        if not self.output:
            found.append("--output is required")
        try:
            resolve_tasks(self.tasks)
        except ValueError as exc:
            found.append(str(exc))
        return found


@dataclass
class GenerateConfig(GenerationConfig):
    """``tide-eval generate`` (alias ``chat``): completions for a prompt or a file of prompts."""

    gen_length: int = option(256, group=_GENERATION, help="tokens to generate")
    steps: int = option(256, group=_GENERATION, help="denoising steps in total; steps per block = steps // blocks")
    prompt: str | None = option(None, help="one prompt (or --prompt-file)")
    prompt_file: str | None = option(None, help="text file with one prompt per line, or .jsonl with a 'prompt' "
                                                "field per line (or --prompt)")
    chat_template: bool = option(True, help="wrap each prompt as a user turn with the chat template")

    def problems(self) -> list[str]:
        found = super().problems()
        if (self.prompt is None) == (self.prompt_file is None):
            found.append("give exactly one of --prompt and --prompt-file")
        return found
