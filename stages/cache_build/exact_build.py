"""Exact targets in stage one (pipeline B): hidden states per target item, the LM-head file once per cache.

``--targets exact`` (alone) or ``both`` (next to the sparse targets) stores, per target item and pass, the
teacher's final hidden state after its last norm (:meth:`tide.models.teacher.TeacherRunner.hidden_at`,
the same forward the sparse targets come from), rounded to bf16 and encoded by ``--hidden-encoding``
(:mod:`cache_schema.exact_targets`). The teacher's output-embedding rows of the shared vocabulary go once
into ``teacher_head.safetensors`` (:mod:`cache_schema.head_file`) when the teacher is loaded; the manifest
records the file's size and SHA-256 when the build is finalised.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from cache_schema.directory import CacheDirectory
from cache_schema.exact_targets import ExactInfo, HiddenArrays, HiddenCodec, bf16_to_float32
from cache_schema.files import sha256_of_file
from cache_schema.head_file import HEAD_FILE, HEAD_TENSOR, SAFETENSORS_DTYPES, local_copy, read_head_header

TARGET_KINDS = ("sparse", "exact", "both")
HIDDEN_RESULT = "hidden"  # a request's result key: bf16 bit patterns (P, H) int16


def stores_sparse(kind: str) -> bool:
    return kind in ("sparse", "both")


def stores_exact(kind: str) -> bool:
    return kind in ("exact", "both")


def head_weight(model: nn.Module, shared_vocab_size: int) -> torch.Tensor:
    """The teacher's output-embedding rows of the shared vocabulary (V, H), in the teacher's dtype."""
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ValueError("the teacher's LM head has a bias; exact targets store the weight rows only")
    weight = head.weight.detach()
    if not 0 < shared_vocab_size <= weight.shape[0]:
        raise ValueError(f"shared_vocab_size={shared_vocab_size} must lie in [1, {weight.shape[0]}] (the head's rows)")
    dtype = str(weight.dtype).removeprefix("torch.")
    if dtype not in SAFETENSORS_DTYPES:
        raise ValueError(f"the teacher's LM head is {weight.dtype}; exact targets store {sorted(SAFETENSORS_DTYPES)}")
    return weight[:shared_vocab_size].contiguous().cpu()


def write_head_file(directory: CacheDirectory, model: nn.Module, shared_vocab_size: int) -> None:
    """Write the head file atomically, unless an identical one is there (a resumed build, another rank)."""
    from safetensors.torch import save

    data = save({HEAD_TENSOR: head_weight(model, shared_vocab_size)},
                metadata={"content": "teacher LM-head rows of the shared vocabulary (tide-cache exact targets)"})
    store = directory.store
    if store.size(HEAD_FILE) == len(data) and hashlib.sha256(data).hexdigest() == store.sha256(HEAD_FILE):
        return
    store.write_bytes(HEAD_FILE, data)


def with_exact_setup(settings: Any, model: nn.Module, directory: CacheDirectory) -> Any:
    """The target settings with the teacher's hidden size, after writing its head file (exact targets only)."""
    if not stores_exact(settings.kind):
        return settings
    write_head_file(directory, model, int(settings.shared_vocab_size))
    return dataclasses.replace(settings, hidden_size=int(model.get_output_embeddings().weight.shape[1]))


def exact_info(directory: CacheDirectory, hidden_encoding: str) -> ExactInfo:
    """The manifest's ``targets.exact`` from the head file in place (its width, dtype, size and SHA-256)."""
    if not directory.store.is_file(HEAD_FILE):
        raise FileNotFoundError(f"{directory.store.display(HEAD_FILE)}: the teacher LM-head file is missing; rerun "
                                "the build to write it")
    path = local_copy(directory.store, HEAD_FILE)
    entry = read_head_header(path)[HEAD_TENSOR]
    dtype = {v: k for k, v in SAFETENSORS_DTYPES.items()}[entry["dtype"]]
    return ExactInfo(hidden_encoding=hidden_encoding, hidden_size=int(entry["shape"][1]), head_file=HEAD_FILE,
                     head_bytes=path.stat().st_size, head_sha256=sha256_of_file(path), head_dtype=dtype)


def hidden_results(hidden: torch.Tensor) -> np.ndarray:
    """bf16 bit patterns (N, H) int16 of a batch's hidden states, as the requests keep them."""
    return hidden.to(torch.bfloat16).view(torch.int16).cpu().numpy()


def item_hidden(requests: Sequence[Any], num_items: int, codec: HiddenCodec, where: str) -> HiddenArrays:
    """A row's stored hidden states in item order, gathered from the requests that computed them."""
    bits = np.zeros((num_items, codec.hidden_size), dtype=np.int16)
    filled = np.zeros(num_items, dtype=bool)
    for request in requests:
        bits[request.items] = request.results[HIDDEN_RESULT]
        filled[request.items] = True
    if not filled.all():
        raise RuntimeError(f"{where}: no teacher hidden state for target items {np.flatnonzero(~filled)[:5].tolist()} "
                           "(internal error: a teacher forward is missing)")
    return codec.quantise(bf16_to_float32(bits))


__all__ = ["HIDDEN_RESULT", "TARGET_KINDS", "exact_info", "head_weight", "hidden_results", "item_hidden",
           "stores_exact", "stores_sparse", "with_exact_setup", "write_head_file"]
