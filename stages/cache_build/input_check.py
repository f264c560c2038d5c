"""A resumed build reads the inputs it started with: the data sources, the teacher weights, both tokenizers.

Shard content is a pure function of the settings and the inputs, so a build killed and resumed equals an
uninterrupted one only if the inputs did not change in between. The survey (the build's journal) records
when the build starts a content fingerprint of every data source (:func:`source_fingerprints`), the
teacher's weights fingerprint (:func:`stages.provenance.weights_fingerprint`) and both tokenizers'
fingerprints; :func:`check_inputs_unchanged` recomputes each on resume and refuses, naming what changed,
instead of mixing shards of old and new inputs.

A source's fingerprint is ``sha256:<hex>`` of what the build reads: a local file's bytes (every file a
glob matches, in name order), a Hugging Face dataset's Arrow files (the split as loaded; a dataset held in
memory is hashed row by row). Hashing reads every byte once — a few seconds per GB, next to a build's
hours — and the teacher's weights the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from cache_schema.directory import CacheDirectory
from cache_schema.files import sha256_of_file
from stages.cache_build.sources import load_hf_source, local_paths, parse_source, split_sources
from stages.provenance import weights_fingerprint

logger = logging.getLogger(__name__)

SOURCES_KEY = "sources_fingerprint"  # the survey's field


class InputsChangedError(RuntimeError):
    """An input of a resumed build differs from the one the build started with."""


def _digest_lines(lines: list[str]) -> str:
    outer = hashlib.sha256()
    for line in lines:
        outer.update(line.encode("utf-8") + b"\n")
    return "sha256:" + outer.hexdigest()


def _dataset_digest(table: Any) -> str:
    files = [entry["filename"] for entry in getattr(table, "cache_files", None) or []]
    if files:  # the Arrow files the memory-mapped dataset reads (its slice included)
        return _digest_lines([f"arrow {sha256_of_file(name)}" for name in files] + [f"rows {len(table)}"])
    rows = hashlib.sha256()
    for row in table:
        rows.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8") + b"\n")
    return "sha256:" + rows.hexdigest()


def source_fingerprints(spec: str) -> dict[str, str]:
    """``{source: "sha256:<hex>"}`` for every ``+``-joined source of ``spec`` (see the module docstring)."""
    out: dict[str, str] = {}
    for part in split_sources(spec):
        source = parse_source(part)
        if source.kind == "local":
            out[part] = _digest_lines([f"{p.name} {sha256_of_file(p)}" for p in local_paths(source.name)])
        else:
            out[part] = _dataset_digest(load_hf_source(source))
    return out


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 23 else text[:23] + "…"


def check_inputs_unchanged(config: Any, survey: dict[str, Any], student_tok: Any, teacher_tok: Any) -> None:
    """Refuse to resume when a data source, the teacher weights or a tokenizer differs from what the survey
    recorded when the build started; each changed input is named."""
    from tide.tokenizer_fingerprint import tokenizer_fingerprint

    changed: list[str] = []
    recorded = survey.get(SOURCES_KEY)
    if not isinstance(recorded, dict):
        changed.append("the journal records no data fingerprint (the build was started by an older version)")
    else:
        current = source_fingerprints(config.sources)
        for part in sorted(set(recorded) | set(current)):
            if recorded.get(part) != current.get(part):
                changed.append(f"data source {part}: its content changed since the build started "
                               f"({_short(recorded.get(part))} then, {_short(current.get(part))} now)")
    weights = weights_fingerprint(config.teacher)
    if weights != survey["teacher"]["weights_fingerprint"]:
        changed.append(f"teacher weights {config.teacher}: changed since the build started "
                       f"({_short(survey['teacher']['weights_fingerprint'])} then, {_short(weights)} now)")
    for side, tokenizer, before in (
        ("student tokenizer", student_tok, survey["student"]["tokenizer_fingerprint"]),
        ("teacher tokenizer", teacher_tok, survey["teacher_tokenizer_fingerprint"]),
    ):
        if tokenizer_fingerprint(tokenizer) != before:
            changed.append(f"{side}: changed since the build started")
    if changed:
        root = CacheDirectory(config.output).root
        raise InputsChangedError(
            f"{root}: refusing to resume, the inputs changed: " + "; ".join(changed) + ". Resuming would mix "
            "shards made from old and new inputs: restore the original inputs, or rerun with --overwrite to "
            "rebuild from the current ones")
    logger.info("resume: data sources, teacher weights and tokenizers are the ones the build started with")
