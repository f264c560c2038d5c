"""Why a source row did not become a sample: the skip reasons and their counter.

Malformed rows never stop a build. Every reader and every preparation step raises :class:`SkipSample` with
one of the reasons below, and the caller counts it in a :class:`SkipCounter`; the build records the counts
in its manifest statistics.
"""

from __future__ import annotations

import logging
from collections import Counter

logger = logging.getLogger(__name__)

SKIP_INVALID_JSON = "invalid_json"
SKIP_BAD_ROW = "bad_row_type"
SKIP_NO_MESSAGES = "no_messages"
SKIP_BAD_MESSAGES = "bad_messages_type"
SKIP_BAD_MESSAGE = "bad_message_type"
SKIP_UNKNOWN_ROLE = "unknown_role"
SKIP_BAD_CONTENT = "bad_content_type"
SKIP_UNDECODABLE = "undecodable_text"
SKIP_EMPTY_ASSISTANT = "empty_assistant"
SKIP_NO_ASSISTANT = "no_assistant_turn"
SKIP_TEMPLATE = "template_error"
SKIP_SPAN = "content_not_found"
SKIP_PROMPT_TOO_LONG = "prompt_too_long"
SKIP_NO_MASKABLE = "no_maskable"
SKIP_LAST_NOT_ASSISTANT = "last_turn_not_assistant"
SKIP_PROMPT_MISMATCH = "prompt_not_prefix"
# Rows a source's options leave out (counted so that nothing disappears unrecorded).
SKIP_HELD_OUT = "held_out"
SKIP_LANGUAGE = "language_filter"


class SkipSample(Exception):
    """A row that cannot become a training sample; ``reason`` is the skip-counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SkipCounter:
    """Counts skipped rows per reason (plain ``dict`` via :meth:`as_dict`)."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()

    def add(self, reason: str, sample_id: str = "", detail: str = "") -> None:
        self.counts[reason] += 1
        logger.debug("skipped %s (%s) %s", sample_id, reason, detail)

    @property
    def total(self) -> int:
        return int(sum(self.counts.values()))

    def __getitem__(self, reason: str) -> int:
        return int(self.counts[reason])

    def as_dict(self) -> dict[str, int]:
        return {reason: int(n) for reason, n in sorted(self.counts.items())}

    def __repr__(self) -> str:
        return f"SkipCounter({self.as_dict()})"
