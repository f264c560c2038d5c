"""Stage two, ``tide-train``: train the student from a logits cache alone (never a teacher).

Modules: ``config`` (options), ``order`` (deterministic epoch order and data cursor), ``data`` (streaming
over cache row groups), ``collate`` (padded tensors and flat target tables), ``preflight`` (refusals before
training), ``step`` (student forward and losses), ``loop`` (the accelerate trainer), ``checkpoint``
(atomic checkpoints and resume), ``metrics`` (JSONL, TensorBoard, loss curve) and ``cli``. Synthetic caches
for tests and benchmarks come from :mod:`tide.testing.synthetic_cache`.
"""
