"""Pipeline B on exact targets: the teacher's hidden states at the target positions and its LM-head file.

A shared cache may store exact targets (``targets.exact`` in its manifest; docs/cache-format.md, "Exact
tier") alone or next to its sparse ones; ``--teacher-targets`` picks which a run trains on (:func:`use_exact`).
The LM-head file is checked against the manifest (size and SHA-256) and loaded once; every batch then
carries the items' hidden states (bf16, or int8 codes and scales, decoded without a copy) and a reference to
the head, and the vocabulary losses take their full-vocabulary form at any temperature
(:mod:`tide.losses.full`). The teacher's logits are recomputed inside the objective's LM-head chunks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from cache_schema.exact_targets import HiddenArrays, HiddenCodec
from cache_schema.head_file import HEAD_TENSOR, HeadFileError, check_head_header, verify_head_file
from cache_schema.manifest import Manifest
from cache_schema.schemas import PIPELINE_SHARED
from stages.train.pipelines import VocabItems, row_column, vocab_loss_targets
from tide.exact_targets import ExactTeacher, TeacherHead
from tide.objective import VocabTargets

TEACHER_TARGETS = ("auto", "exact", "sparse")


class TeacherTargetsError(ValueError):
    """``--teacher-targets`` asks for targets the cache does not store."""


def use_exact(manifest: Manifest, teacher_targets: str) -> bool:
    """Whether a run on this shared cache trains on its exact targets (``auto``: wherever it stores them)."""
    if teacher_targets not in TEACHER_TARGETS:
        raise TeacherTargetsError(f"--teacher-targets {teacher_targets!r}: expected one of {TEACHER_TARGETS}")
    stored = [name for name in ("sparse", "exact") if getattr(manifest.targets, name) is not None]
    if teacher_targets != "auto" and teacher_targets not in stored:
        raise TeacherTargetsError(f"--teacher-targets {teacher_targets}: the cache stores only {' and '.join(stored)} "
                                  f"targets; pick those or rebuild the cache with --targets {teacher_targets}")
    return teacher_targets == "exact" or (teacher_targets == "auto" and "exact" in stored)


def load_teacher_head(cache_dir: str | os.PathLike[str], manifest: Manifest) -> TeacherHead:
    """The cache's LM-head rows, after checking the file against the manifest (:class:`HeadFileError` if not)."""
    from safetensors.torch import load_file

    info = manifest.targets.exact
    path = verify_head_file(cache_dir, info)
    check_head_header(path, info, int(manifest.teacher.shared_vocab_size))
    tensors = load_file(str(path))
    if set(tensors) != {HEAD_TENSOR}:
        raise HeadFileError(f"{path}: expected the one tensor {HEAD_TENSOR!r}, found {sorted(tensors)}")
    return TeacherHead(tensors[HEAD_TENSOR])


def _teacher_tensors(arrays: HiddenArrays) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Torch views of stored hidden states: bf16 (the int16 bit patterns reinterpreted) or int8 codes + scale."""
    codes = torch.from_numpy(np.ascontiguousarray(arrays.codes))
    if arrays.scale is None:
        return codes.view(torch.bfloat16), None
    return codes, torch.from_numpy(np.ascontiguousarray(arrays.scale))


@dataclass(frozen=True)
class ExactSharedPipeline:
    """Pipeline B on exact targets: hidden states at target positions, the teacher head from the cache."""

    codec: HiddenCodec
    head: TeacherHead
    name: str = PIPELINE_SHARED
    target_kind: str = "vocab"
    items_class: type = VocabItems
    targets_class: type = VocabTargets
    any_temperature: bool = True  # the whole distribution: no stored temperature needed

    def columns(self, target_pass: str) -> list[str]:
        return ["target_positions", *self.codec.columns(target_pass)]

    def row_items(self, row: Mapping[str, object], label: str, b: int, n: int, target_pass: str) -> dict:
        """The row's hidden states at its target positions, items past ``n`` tokens cut."""
        positions = row_column(row, "target_positions", label).astype(np.int64)
        columns = {name: row_column(row, name, label) for name in self.codec.columns(target_pass)}
        try:
            hidden = self.codec.decode(columns, target_pass)
        except ValueError as exc:
            raise ValueError(f"{label}: the {target_pass} exact targets do not decode: {exc}") from None
        if hidden.num_items != positions.shape[0]:
            raise ValueError(f"{label}: {hidden.num_items} {target_pass} hidden states for {positions.shape[0]} "
                             "target positions")
        keep = positions < n
        return {"row": np.full(int(keep.sum()), b, dtype=np.int64), "position": positions[keep],
                "hidden": hidden.select(keep)}

    def concat_items(self, parts: list[dict]) -> VocabItems:
        hidden, scale = _teacher_tensors(HiddenArrays.concat([p["hidden"] for p in parts], self.codec))
        return VocabItems(row=torch.from_numpy(np.concatenate([p["row"] for p in parts])),
                                position=torch.from_numpy(np.concatenate([p["position"] for p in parts])),
                                teacher=ExactTeacher(hidden=hidden, head=self.head, scale=scale))

    def loss_targets(self, items: VocabItems, flat_masked: torch.Tensor, row_t: torch.Tensor, seq_len: int) -> VocabTargets:
        return vocab_loss_targets(items, flat_masked, seq_len)


def exact_pipeline(manifest: Manifest, cache_dir: str | os.PathLike[str] | None) -> ExactSharedPipeline:
    """The training view of a shared cache's exact targets (the head file read from ``cache_dir``)."""
    if cache_dir is None:
        raise TeacherTargetsError("exact targets need the cache directory: its LM-head file lives there")
    info = manifest.targets.exact
    return ExactSharedPipeline(codec=info.codec(), head=load_teacher_head(cache_dir, manifest))


__all__ = ["TEACHER_TARGETS", "ExactSharedPipeline", "TeacherTargetsError", "exact_pipeline", "load_teacher_head",
           "use_exact"]
