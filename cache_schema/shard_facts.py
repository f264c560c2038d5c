"""The manifest facts training relies on, recorded in every format-v2 shard's Parquet key-value metadata and
cross-checked against the manifest when a cache is opened (by the reader and by ``validate``).

A manifest edited after the build (temperatures changed from [1, 2] to [1, 4], another k ceiling, another
vocabulary size) would otherwise be believed: the shards hold no other record of them, and training would
read the stored log tails at the wrong temperatures. The facts: the pipeline (the ``tide_cache_pipeline``
key every shard has), the stored temperatures, the k policy, the student, teacher and shared vocabulary
sizes. A shard written before the facts were recorded (format v1, or v2 from an earlier release) lacks the
key and is accepted on its pipeline alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import pyarrow as pa

from cache_schema.manifest import Manifest, StudentInfo, TargetsInfo, TeacherInfo

__all__ = ["FACTS_KEY", "PIPELINE_KEY", "fact_problems", "manifest_facts", "shard_facts", "with_facts"]

FACTS_KEY = "tide_cache_facts"
PIPELINE_KEY = "tide_cache_pipeline"
_FIX = "the manifest was edited or belongs to another build; restore the manifest the build wrote"


def shard_facts(pipeline: str, targets: TargetsInfo, teacher: TeacherInfo, student: StudentInfo) -> dict[str, Any]:
    """The facts a build records in its shards (JSON-ready; numbers as the manifest's JSON holds them)."""
    policy = targets.sparse.k_policy if targets.sparse is not None else None
    return {
        "pipeline": pipeline,
        "temperatures": [float(t) for t in targets.temperatures],
        "k_policy": None if policy is None else {
            key: (float(value) if isinstance(value, float) else value) for key, value in asdict(policy).items()},
        "student_vocab_size": int(student.vocab_size),
        "teacher_vocab_size": int(teacher.vocab_size),
        "shared_vocab_size": None if teacher.shared_vocab_size is None else int(teacher.shared_vocab_size),
    }


def manifest_facts(manifest: Manifest) -> dict[str, Any]:
    """The facts as a manifest states them."""
    return shard_facts(manifest.pipeline, manifest.targets, manifest.teacher, manifest.student)


def with_facts(schema: pa.Schema, facts: Mapping[str, Any] | None) -> pa.Schema:
    """``schema`` with ``facts`` added to its key-value metadata (unchanged for None)."""
    if facts is None:
        return schema
    return schema.with_metadata({**(schema.metadata or {}), FACTS_KEY: json.dumps(dict(facts), sort_keys=True)})


def fact_problems(manifest: Manifest, metadata: Mapping[bytes, bytes] | None) -> list[str]:
    """Where a shard's key-value ``metadata`` (its Parquet footer's) disagrees with ``manifest``: one message
    per fact, naming both values."""
    metadata = metadata or {}
    stored: dict[str, Any] = {}
    if PIPELINE_KEY.encode() in metadata:
        stored["pipeline"] = metadata[PIPELINE_KEY.encode()].decode("utf-8", "replace")
    raw = metadata.get(FACTS_KEY.encode())
    if raw is not None:
        try:
            recorded = json.loads(raw)
        except ValueError:
            return [f"its {FACTS_KEY} metadata is not JSON; rebuild this shard"]
        if not isinstance(recorded, dict):
            return [f"its {FACTS_KEY} metadata is not a JSON object; rebuild this shard"]
        stored.update(recorded)
    expected = manifest_facts(manifest)
    return [f"{name}: the manifest says {expected[name]}, the shard was written with {stored[name]}; {_FIX}"
            for name in expected if name in stored and stored[name] != expected[name]]
