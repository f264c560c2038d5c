"""Data extraction of the fidelity replication (benchmarks/replication/data.py): stdlib functions as chat
pairs, the by-module split, JSONL round trip."""

from __future__ import annotations

import hashlib
import textwrap

import pytest

from benchmarks.replication import data
from tide.testing.chat_data import read_chat_jsonl

SOURCE = textwrap.dedent('''\
    """Module docstring."""
    import os


    def documented(a, b=1):
        """Add two numbers.

        Returns the sum.
        """
        return a + b


    def undocumented(x):
        return x


    def only_docstring():
        """Nothing else."""


    @staticmethod
    async def fetch(url):
        """Fetch a URL."""
        result = await get(url)
        return result


    class Box:
        """A box."""

        def size(self):
            """Size of the box."""
            return 3

        def _hidden(self):
            return None

        class Inner:
            def deep(self):
                """Nested classes are not walked."""
                return 1


    def outer():
        """Outer."""
        def inner():
            """Nested functions are part of their parent, not pairs."""
            return 2
        return inner
    ''')


def test_extract_pairs_prompt_is_signature_and_docstring_response_the_whole_function():
    pairs = data.extract_pairs(SOURCE, "pkg.mod")
    assert [p.qualname for p in pairs] == ["documented", "fetch", "Box.size", "outer"]
    first = pairs[0]
    assert first.module == "pkg.mod"
    assert first.prompt == 'def documented(a, b=1):\n    """Add two numbers.\n\n    Returns the sum.\n    """\n'
    assert first.response == first.prompt + "    return a + b\n"
    method = pairs[2]
    # dedented out of the class body
    assert method.prompt == 'def size(self):\n    """Size of the box."""\n'
    assert method.response == 'def size(self):\n    """Size of the box."""\n    return 3\n'
    # decorators are not part of the function text; async functions count
    assert pairs[1].response.startswith("async def fetch(url):")
    assert "inner" in pairs[3].response and pairs[3].response.endswith("    return inner\n")


def test_messages_are_a_user_assistant_pair():
    pair = data.extract_pairs(SOURCE, "m")[0]
    messages = pair.messages()
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"] == data.PROMPT_PREFIX + pair.prompt
    assert messages[1]["content"] == pair.response


def test_extract_pairs_rejects_invalid_source():
    with pytest.raises(SyntaxError):
        data.extract_pairs("def broken(:\n", "m")


def test_heldout_decision_is_a_hash_of_the_top_level_module():
    for module in ("email", "json", "asyncio", "collections"):
        digest = hashlib.blake2b(module.encode(), digest_size=8).digest()
        expected = int.from_bytes(digest, "big") % 100 < 10
        assert data.is_heldout_module(module) is expected
        assert data.is_heldout_module(module + ".sub.deeper") is expected
    assert data.is_heldout_module("anything", 100) is True
    assert data.is_heldout_module("anything", 0) is False
    with pytest.raises(ValueError, match="heldout_percent"):
        data.is_heldout_module("x", 101)


def test_split_keeps_every_top_level_module_on_one_side():
    pairs = [data.FunctionPair(f"{top}.m{i}", f"f{i}", "p", "r") for top in ("email", "json", "os", "re") for i in range(3)]
    train, heldout = data.split_pairs(pairs, 50)
    tops_train = {p.module.split(".")[0] for p in train}
    tops_heldout = {p.module.split(".")[0] for p in heldout}
    assert not tops_train & tops_heldout
    assert len(train) + len(heldout) == len(pairs)
    assert all(data.is_heldout_module(p.module, 50) for p in heldout)


def test_stdlib_files_exclude_tests_and_site_packages(tmp_path):
    for rel in ("a.py", "pkg/__init__.py", "pkg/b.py", "test/test_a.py", "site-packages/x/y.py", "pkg/tests/t.py",
                "notes.txt"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x = 1\n")
    found = list(data.iter_stdlib_files(tmp_path))
    assert found == [("a", tmp_path / "a.py"), ("pkg", tmp_path / "pkg/__init__.py"), ("pkg.b", tmp_path / "pkg/b.py")]
    with pytest.raises(FileNotFoundError):
        list(data.iter_stdlib_files(tmp_path / "missing"))


def test_stdlib_pairs_filters_by_length_and_skips_broken_files(tmp_path):
    (tmp_path / "good.py").write_text(SOURCE)
    (tmp_path / "broken.py").write_text("def broken(:\n")
    all_pairs = data.stdlib_pairs(tmp_path, max_chars=10_000)
    assert [p.qualname for p in all_pairs] == ["documented", "fetch", "Box.size", "outer"]
    short = data.stdlib_pairs(tmp_path, max_chars=100)
    assert short and all(len(p.prompt) + len(p.response) <= 100 for p in short)
    assert len(short) < len(all_pairs)
    with pytest.raises(ValueError, match="max_chars"):
        data.stdlib_pairs(tmp_path, max_chars=0)


def test_jsonl_round_trip(tmp_path):
    conversations = [p.messages() for p in data.extract_pairs(SOURCE, "m")]
    path = data.write_jsonl(conversations, tmp_path / "d" / "x.jsonl", [{"i": i} for i in range(len(conversations))])
    assert read_chat_jsonl(path) == conversations
    with pytest.raises(ValueError, match="extra"):
        data.write_jsonl(conversations, tmp_path / "y.jsonl", [{}])
    (tmp_path / "bad.jsonl").write_text('{"other": 1}\n')
    with pytest.raises(ValueError, match="messages"):
        read_chat_jsonl(tmp_path / "bad.jsonl")


def test_humaneval_is_the_second_heldout_set():
    conversations = data.humaneval_conversations()
    assert len(conversations) == 164
    assert conversations[0][1]["role"] == "assistant" and "def " in conversations[0][1]["content"]
