"""The empty think block of Qwen3-style chat templates: where a prompt gets one, and its removal from answers.

The original harness (TIDE's ``dllm/core/eval/base.py``) renders every chat with ``enable_thinking=False``,
so a Qwen3 template already ends each generation prompt with the empty block ``<think>\\n\\n</think>\\n\\n``
and writes it before a final (``gen_prefix``) assistant message too; then it appends the block to every
context that does not contain it, and it removes ``<think>…</think>`` blocks from answers before the stop
strings are applied. Here (``think_block="auto"``, the default) the block is inserted only where the
rendered context lacks it, and at the place the template would put it: at the end of a generation prompt,
or right before the final assistant message's content — never after a code prefix such as HumanEval's
or MBPP's, where appending it would land inside the code. With a Qwen3 template the two rules give the
same text. ``think_block="never"`` renders with the template's own default and inserts nothing (an
ablation). Every context's outcome is counted for the result's provenance.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

THINK_BLOCK = "<think>\n\n</think>\n\n"
THINK_TAGS = ("<think>", "</think>")
THINK_MODES = ("auto", "never")
_THINK_SPAN = re.compile(r"<think>.*?</think>\s*", re.DOTALL)

# How a context came by its think block (provenance counts).
RENDERED = "rendered_by_template"
INSERTED = "inserted"
ABSENT = "absent"


def strip_think_blocks(text: str) -> str:
    """``text`` without any closed ``<think>…</think>`` block and the whitespace after it (an unclosed
    ``<think>`` stays, as in the original)."""
    return _THINK_SPAN.sub("", text)


def place_think_block(rendered: str, final_content: str | None) -> tuple[str, str]:
    """(context, outcome) for a rendered chat that lacks or holds the block.

    ``final_content`` is the content of a final assistant message the context continues (lm-eval's
    ``gen_prefix``), or None when the context ends with the generation prompt. A context that holds the
    block anywhere is returned as is (``RENDERED``); else the block goes at the end, or right before the
    final content and its leading whitespace (``INSERTED``)."""
    if THINK_BLOCK in rendered:
        return rendered, RENDERED
    if final_content is None:
        return rendered + THINK_BLOCK, INSERTED
    core = final_content.strip()
    at = rendered.rfind(core) if core else len(rendered)
    if at < 0:
        raise ValueError("the final assistant message is not in the rendered chat; cannot place the think block")
    lead = final_content[: len(final_content) - len(final_content.lstrip())]
    if lead and rendered[:at].endswith(lead):
        at -= len(lead)
    return rendered[:at] + THINK_BLOCK + rendered[at:], INSERTED


@dataclass
class ThinkRecord:
    """What the think-block rule did over one task's contexts (``outcomes``: counts by outcome)."""

    mode: str = "auto"
    outcomes: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "enable_thinking": False if self.mode == "auto" else "template default",
            "contexts": {key: int(self.outcomes.get(key, 0)) for key in (RENDERED, INSERTED, ABSENT)},
            "stripped_from_answers": True,
        }
