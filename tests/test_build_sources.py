"""Stage-one sources: local JSONL / JSON / Parquet files joined with '+', the Hugging Face syntax, the
source options (held-out split, language filter, every configuration), interleaving in proportion, and
errors for missing or unreadable files."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.cache_build.skips import SkipCounter
from stages.cache_build.sources import PAPER_SOURCES, iter_sources, parse_source, split_sources

QA = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."}]


def _write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_jsonl_parquet_and_json_joined(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    _write_jsonl(jsonl, [json.dumps({"messages": QA}), json.dumps({"messages": QA[::-1]})])
    table = pa.table({"messages": [QA, [QA[0], {"role": "assistant", "content": "five"}]], "extra": [1, 2]})
    parquet = tmp_path / "b.parquet"
    pq.write_table(table, parquet, compression="zstd")
    plain = tmp_path / "c.json"
    plain.write_text(json.dumps({"data": [{"messages": QA}]}), encoding="utf-8")
    spec = f"{jsonl} + {parquet}+{plain}"
    rows = list(iter_sources(spec, mix=False))
    assert [r.sample_id for r in rows] == [f"{jsonl}:0", f"{jsonl}:1", f"{parquet}:0", f"{parquet}:1", f"{plain}:0"]
    assert rows[3].messages[1] == {"role": "assistant", "content": "five"}
    assert rows[2].messages == QA
    with pytest.raises(ValueError, match="empty source"):
        list(iter_sources(f"{jsonl}++{parquet}"))
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        list(iter_sources(str(tmp_path / "missing.jsonl")))


def test_hf_source_syntax(monkeypatch):
    spec = parse_source("allenai/tulu-3-sft-mixture@default:train[:10]")
    assert (spec.kind, spec.name, spec.config, spec.split) == ("hf", "allenai/tulu-3-sft-mixture", "default",
                                                                 "train[:10]")
    assert parse_source("HuggingFaceTB/smoltalk").split == "train"
    calls = []

    def fake_load(name, config=None, split=None):
        calls.append((name, config, split))
        return [{"messages": QA}, {"nothing": 1}]

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    skips = SkipCounter()
    rows = list(iter_sources("org/set:test", skips))
    assert calls == [("org/set", None, "test")]
    assert [r.sample_id for r in rows] == ["org/set:test:0"] and skips.as_dict() == {"no_messages": 1}
    with pytest.raises(ValueError, match="there are no built-in sources"):
        parse_source("builtin:humaneval")


def test_unreadable_json_document_is_an_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{oops", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.json"):
        list(iter_sources(str(path)))


# ------------------------------------------------------------------------------------- source options


def _chats(path, n):
    rows = [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": f"answer {i}"}]} for i in range(n)]
    _write_jsonl(path, [json.dumps(r) for r in rows])
    return path


def _index(sample):
    return int(sample.sample_id.rsplit(":", 1)[1])


def test_holdout_keeps_the_train_test_split_part_in_its_order(tmp_path):
    from datasets import Dataset

    path = _chats(tmp_path / "d.jsonl", 20)
    skips = SkipCounter()
    kept = [_index(r) for r in iter_sources(f"{path}{{holdout=0.05}}", skips)]
    # np.random.default_rng(42).permutation(20) = [15, 9, 14, 7, ...]: row 15 alone is held out
    assert len(kept) == 19 and 15 not in kept and kept[:3] == [9, 14, 7]
    assert skips.as_dict() == {"held_out": 1}
    reference = Dataset.from_dict({"i": list(range(20))}).train_test_split(test_size=0.05, seed=42)
    assert kept == list(reference["train"]["i"]) and list(reference["test"]["i"]) == [15]
    held = [r.sample_id for r in iter_sources(f"{path}{{holdout=0.05, part=heldout}}")]
    assert held == [f"{path}{{holdout=0.05, part=heldout}}:15"]
    reseeded = Dataset.from_dict({"i": list(range(20))}).train_test_split(test_size=0.05, seed=1)
    assert [_index(r) for r in iter_sources(f"{path}{{holdout=0.05,seed=1}}")] == list(reseeded["train"]["i"])


def test_language_filter_is_a_case_sensitive_substring_of_the_assistant_text(tmp_path):
    answers = ["use python", "Python 3", "no code", "```python\nprint(1)```", "pythonic"]
    path = tmp_path / "code.jsonl"
    rows = [{"messages": [{"role": "user", "content": "write python"}, {"role": "assistant", "content": a}]}
            for a in answers]
    rows.append({"instruction": "python?", "output": "sure: python"})  # instruction/output rows too
    _write_jsonl(path, [json.dumps(r) for r in rows])
    skips = SkipCounter()
    kept = [_index(r) for r in iter_sources(f"{path}{{lang=python}}", skips)]
    assert kept == [0, 3, 4, 5]  # "Python 3" and "no code" go, although their user turn says python
    assert skips.as_dict() == {"language_filter": 2}


def test_every_configuration_then_split_then_filter(monkeypatch):
    """``@*`` concatenates every configuration in the listed order; the split comes before the filter."""
    import datasets

    tables = {
        "first": [{"instruction": f"q{i}", "output": "python" if i % 2 else "java"} for i in range(10)],
        "second": [{"instruction": f"r{i}", "output": "python"} for i in range(10)],
    }
    monkeypatch.setattr(datasets, "get_dataset_config_names", lambda name: ["first", "second"])
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None, split=None: tables[config])
    rows = list(iter_sources("org/code@*{lang=python,holdout=0.05}"))
    order = [15, 9, 14, 7, 12, 10, 6, 19, 3, 0, 16, 5, 11, 18, 2, 4, 17, 1, 13, 8]  # default_rng(42), n = 20
    expected = [i for i in order[1:] if i >= 10 or i % 2]  # row 15 held out, then the even "java" rows go
    assert [_index(r) for r in rows] == expected
    assert all(r.messages[1]["content"] == "python" for r in rows)


def test_option_syntax_and_errors(tmp_path):
    spec = parse_source("OpenCoder-LLM/opc-sft-stage1@*{lang=python, holdout=0.05, seed=7}")
    assert (spec.name, spec.config, spec.split) == ("OpenCoder-LLM/opc-sft-stage1", "*", "train")
    assert (spec.options.lang, spec.options.holdout, spec.options.seed) == ("python", 0.05, 7)
    assert parse_source("a.jsonl{holdout=0.1}").kind == "local"
    for bad, message in [
        ("a.jsonl{holdout=1.5}", "must lie in"),
        ("a.jsonl{size=3}", "unknown option 'size'"),
        ("a.jsonl{lang}", "is not key=value"),
        ("a.jsonl{lang=a,lang=b}", "given twice"),
        ("a.jsonl{part=heldout}", "needs a holdout"),
        ("a.jsonl{seed=x}", "seed an integer"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_source(bad)
    small = _chats(tmp_path / "small.jsonl", 3)
    with pytest.raises(ValueError, match="leaves an empty part"):
        list(iter_sources(f"{small}{{holdout=0.9}}"))


def test_paper_mixture_names_the_four_sources_with_their_options():
    parts = [parse_source(p) for p in split_sources(PAPER_SOURCES)]
    assert [p.name for p in parts] == ["allenai/tulu-3-sft-mixture", "HuggingFaceTB/smoltalk",
                                       "OpenCoder-LLM/opc-sft-stage1", "OpenCoder-LLM/opc-sft-stage2"]
    assert [(p.config, p.options.holdout, p.options.lang) for p in parts] == [
        (None, 0.05, None), ("all", 0.0, None), ("*", 0.05, "python"), ("*", 0.05, "python")]
    assert {p.options.seed for p in parts} == {42}


# ------------------------------------------------------------------------------------------ interleaving


def test_two_sources_interleave_in_proportion(tmp_path):
    a = _chats(tmp_path / "a.jsonl", 30)
    b = _chats(tmp_path / "b.jsonl", 10)
    rows = [r.sample_id for r in iter_sources(f"{a}+{b}")]
    assert len(rows) == 40 and rows == [r.sample_id for r in iter_sources(f"{a}+{b}")]  # deterministic
    assert [r for r in rows if r.startswith(str(a))] == [f"{a}:{i}" for i in range(30)]  # own order kept
    for prefix in range(1, 41):
        from_b = sum(r.startswith(str(b)) for r in rows[:prefix])
        assert abs(from_b - prefix / 4) <= 1.0, (prefix, from_b)  # b is a quarter of every prefix
