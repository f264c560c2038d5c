"""Validation of a row's messages: the one canonical form every later step takes (``[{"role", "content"}]``),
or a :class:`~stages.cache_build.skips.SkipSample` naming why the row cannot be used."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from stages.cache_build.skips import (
    SKIP_BAD_CONTENT,
    SKIP_BAD_MESSAGE,
    SKIP_BAD_MESSAGES,
    SKIP_EMPTY_ASSISTANT,
    SKIP_NO_ASSISTANT,
    SKIP_NO_MESSAGES,
    SKIP_UNDECODABLE,
    SKIP_UNKNOWN_ROLE,
    SkipSample,
)

ROLES = ("system", "user", "assistant")


def normalize_messages(raw: Any) -> list[dict[str, str]]:
    """Validate a row's messages and return them as ``[{"role", "content"}]`` (other keys dropped).

    Raises :class:`SkipSample` with the reason: no messages, wrong types, unknown role, bytes or text that
    is not valid UTF-8, an empty assistant turn, or no assistant turn at all.
    """
    if raw is None:
        raise SkipSample(SKIP_NO_MESSAGES)
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SkipSample(SKIP_BAD_MESSAGES, "messages string is not JSON") from exc
    if isinstance(raw, np.ndarray):
        raw = raw.tolist()
    if not isinstance(raw, (list, tuple)):
        raise SkipSample(SKIP_BAD_MESSAGES, f"messages is {type(raw).__name__}, expected a list")
    if not raw:
        raise SkipSample(SKIP_NO_MESSAGES, "empty message list")
    messages: list[dict[str, str]] = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise SkipSample(SKIP_BAD_MESSAGE, f"message {i} is not a {{role, content}} object")
        role, content = message["role"], message["content"]
        if not isinstance(role, str) or role not in ROLES:
            raise SkipSample(SKIP_UNKNOWN_ROLE, f"message {i} role {role!r}")
        if isinstance(content, (bytes, bytearray)):
            try:
                content = bytes(content).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SkipSample(SKIP_UNDECODABLE, f"message {i} bytes are not UTF-8") from exc
        if not isinstance(content, str):
            raise SkipSample(SKIP_BAD_CONTENT, f"message {i} content is {type(content).__name__}")
        try:
            content.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise SkipSample(SKIP_UNDECODABLE, f"message {i} holds unpaired surrogates") from exc
        if role == "assistant" and (not content or content.isspace()):  # isspace stops at the first letter
            raise SkipSample(SKIP_EMPTY_ASSISTANT, f"message {i}")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise SkipSample(SKIP_NO_ASSISTANT)
    return messages
