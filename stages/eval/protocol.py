"""The evaluation protocol (docs/design.md#evaluation-protocol): the eight benchmarks and their generation settings.

Every benchmark runs with block size 32, CFG 0, low-confidence remasking, greedy decoding and the chat
template applied; generation length and steps are 3 for the two short-answer multiple-choice tasks and 256
for the others. Few-shot counts follow the paper's harness (0 everywhere except BBH, 3-shot CoT), few-shot
examples as chat turns.

``metric`` names the lm-eval result key (``metric,filter``) reported in the summary table; ``also`` lists
further keys recorded next to it where the paper's column is not known for sure; ``gen_kwargs`` overrides
the task's generation settings where the original lm-eval fork differs from the stock task (MMLU-Pro's
stop strings). docs/evaluation.md compares every task with the fork.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_BLOCK_SIZE = 32
DEFAULT_CFG_SCALE = 0.0
DEFAULT_REMASKING = "low_confidence"
DEFAULT_TEMPERATURE = 0.0
# lm-eval's own default: every mean metric gets its (closed-form) standard error, as the original's runs.
DEFAULT_BOOTSTRAP_ITERS = 100_000


@dataclass(frozen=True)
class TaskSetting:
    """One benchmark: lm-eval task (or group) name, generation length, steps, shots, reported metric."""

    task: str
    gen_length: int
    steps: int
    num_fewshot: int
    metric: str
    unsafe_code: bool = False
    note: str = ""
    also: tuple[str, ...] = ()
    gen_kwargs: dict[str, Any] = field(default_factory=dict)


PAPER_TASKS: tuple[TaskSetting, ...] = (
    TaskSetting("mmlu_generative_dream", 3, 3, 0, "exact_match,get_response",
                note="project task YAMLs: the fork's generative_dream definition (stages/eval/tasks)"),
    TaskSetting("mmlu_pro", 256, 256, 0, "exact_match,custom-extract",
                gen_kwargs={"until": ["</s>", "Q:", "<|im_end|>", "Question:"]},
                note="stock lm-eval group with the fork's stop strings; YAML default 5-shot, the protocol runs 0-shot"),
    TaskSetting("hellaswag_gen", 3, 3, 0, "exact_match,first_option_filter",
                note="project task YAML: the fork's hellaswag_gen definition (stages/eval/tasks)"),
    TaskSetting("gsm8k_cot", 256, 256, 0, "exact_match,flexible-extract", also=("exact_match,strict-match",),
                note="stock lm-eval; YAML default 8-shot, the protocol runs 0-shot; the paper's filter is not recorded"),
    TaskSetting("bbh", 256, 256, 3, "exact_match,get-answer",
                note="stock lm-eval group `bbh` = the 27 bbh_cot_fewshot subtasks (3-shot CoT)"),
    TaskSetting("minerva_math", 256, 256, 0, "exact_match,none", also=("math_verify,none",),
                note="stock lm-eval group (7 subjects); YAML default 4-shot, the protocol runs 0-shot; the paper's "
                     "metric is not recorded"),
    TaskSetting("humaneval_instruct", 256, 256, 0, "pass@1,create_test", unsafe_code=True,
                note="stock lm-eval (gen_prefix with the prompt); executes generated code"),
    TaskSetting("mbpp_instruct", 256, 256, 0, "pass_at_1,extract_code", unsafe_code=True,
                note="stock lm-eval; YAML default 3-shot, the protocol runs 0-shot; executes generated code"),
)

# Not among the eight: the fork's other generative MMLU (LLaDA-style prompt, first-line answer), kept because
# which of the fork's two definitions produced the paper's MMLU column could not be verified.
OPTIONAL_TASKS: tuple[TaskSetting, ...] = (
    TaskSetting("mmlu_generative_llada", 3, 3, 0, "exact_match,get_response",
                note="project task YAMLs: the fork's mmlu/generative definition (stages/eval/tasks)"),
)

TASKS_BY_NAME: dict[str, TaskSetting] = {setting.task: setting for setting in PAPER_TASKS + OPTIONAL_TASKS}


def resolve_tasks(spec: str) -> list[TaskSetting]:
    """``all`` or a comma-separated list of task names. Known names get their protocol settings; any
    other lm-eval task name gets the long-generation defaults (256/256, 0-shot, first metric reported)."""
    if not spec or not spec.strip():
        raise ValueError("--tasks is empty: give `all` or a comma-separated list of task names")
    if spec.strip() == "all":
        return list(PAPER_TASKS)
    settings = []
    for name in (part.strip() for part in spec.split(",")):
        if not name:
            raise ValueError(f"--tasks {spec!r} contains an empty task name")
        settings.append(TASKS_BY_NAME.get(name) or TaskSetting(name, 256, 256, 0, metric=""))
    return settings
