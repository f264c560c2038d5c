"""Stage-one sources: local JSONL / JSON / Parquet files joined with '+', the Hugging Face syntax, and
errors for missing or unreadable files."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.cache_build.skips import SkipCounter
from stages.cache_build.sources import iter_sources, parse_source

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
    rows = list(iter_sources(spec))
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
