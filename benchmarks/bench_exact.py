"""The exact tier at the real shapes: bytes per position, training-step time, and the int8 variant's error.

Shapes: the 151,646-id shared slice of the 151,936-row Qwen vocabulary, WeDLM-8B's hidden width 4096 for the
teacher, the 0.6B student's width 1024 with 2 of its layers (the body far smaller than the real one; what the
tier changes is the loss, not the body). Teacher: a random bf16 LM head (rows N(0, σ²) with σ chosen so that
a logit has standard deviation ≈ 3.5) and synthetic final hidden states: RMS-normed Gaussians times a
per-channel gain (log-normal), in two families, ``gaussian`` and ``outliers`` (8 channels 30× larger, like
the massive activations of real LLM residual streams that survive the final norm's gain). They are not a real
teacher's; the int8 error grows with the outliers, which is why both are measured.

Measured:

* **bytes per target position per pass** (zstd Parquet, the writer's defaults) of the exact columns in
  ``bfloat16`` and ``int8-rowscale``, against bf16 / fp32 full logits (2 / 4 bytes × 151,646) and against the
  sparse default (mass policy 0.9 at T = 1, k 16..64, ``rank24-delta8``) on the same teacher, and the head
  file's one-off bytes;
* **training-step time** (BD3LM forward + objective + backward, TIDAL at T = 2 and forward KL at T = 2) on one
  batch decoded from the cache columns by the training pipelines: the sparse default against exact bf16 and
  exact int8; plus the step's FLOP count of the teacher recompute against the student's LM head;
* **KL(full ‖ recon)** of the int8 variant: the teacher from its bf16 hidden state against the one from the
  int8 codes, per position at T = 1 and T = 2 (mean, p99, max), both families.

Writes ``benchmarks/results/exact.json``.

    .venv/bin/python benchmarks/bench_exact.py [--rows 8] [--seq-len 96] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cache_schema.codec import SparseArrays, SparseCodec  # noqa: E402
from cache_schema.exact_targets import HIDDEN_BF16, HIDDEN_INT8, HiddenCodec, bytes_per_item  # noqa: E402
from cache_schema.schemas import ENCODING_PACKED, schema_for, table_from_rows  # noqa: E402
from cache_schema.writer import DEFAULT_COMPRESSION_LEVEL, dictionary_columns  # noqa: E402
from stages.train.collate import CollateSpec, collate_rows  # noqa: E402
from stages.train.exact_pipeline import ExactSharedPipeline  # noqa: E402
from stages.train.pipelines import SharedPipeline  # noqa: E402
from stages.train.step import StudentStep  # noqa: E402
from tide.exact_targets import ExactTeacher, TeacherHead  # noqa: E402
from tide.losses import LossOptions  # noqa: E402
from tide.objective import Objective  # noqa: E402
from tide.targets import KPolicy, sparse_targets  # noqa: E402

logger = logging.getLogger("bench_exact")
RESULTS = ROOT / "benchmarks" / "results" / "exact.json"
VOCAB_ROWS, SHARED = 151_936, 151_646
TEACHER_HIDDEN, STUDENT_HIDDEN, STUDENT_LAYERS = 4096, 1024, 2
LOGIT_STD = 3.5
BLOCK, MASK_ID, EOS_ID = 32, 151_669, 151_645
TEMPERATURES = (1.0, 2.0)
DEFAULT_POLICY = KPolicy(kind="mass", ceiling=64, mass=0.9, temperature=1.0, floor=16)  # the build's default


def teacher_head(gen: torch.Generator) -> TeacherHead:
    """A random bf16 head (V, 4096), filled in blocks so no fp32 copy of the whole matrix exists."""
    weight = torch.empty(SHARED, TEACHER_HIDDEN, dtype=torch.bfloat16)
    sigma = LOGIT_STD / TEACHER_HIDDEN**0.5  # hidden states have unit RMS: a logit's std is σ·√H
    for start in range(0, SHARED, 16384):
        stop = min(start + 16384, SHARED)
        weight[start:stop] = (torch.randn(stop - start, TEACHER_HIDDEN, generator=gen) * sigma).to(torch.bfloat16)
    return TeacherHead(weight)


def hidden_states(n: int, family: str, gen: torch.Generator) -> torch.Tensor:
    """(n, 4096) bf16 final normed hidden states of a synthetic family (see the module docstring)."""
    gain = torch.exp(0.3 * torch.randn(TEACHER_HIDDEN, generator=gen))
    x = torch.randn(n, TEACHER_HIDDEN, generator=gen)
    if family == "outliers":
        x[:, torch.randperm(TEACHER_HIDDEN, generator=gen)[:8]] *= 30.0
    x = x / x.pow(2).mean(dim=1, keepdim=True).sqrt()
    return (x * gain).to(torch.bfloat16)


# ---------------------------------------------------------------------------------------------------- bytes


def ranges(counts: list[int]) -> list[slice]:
    """Consecutive item ranges of the given sizes."""
    bounds = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def pick(arrays, n: int, part: slice):
    keep = np.zeros(n, dtype=bool)
    keep[part] = True
    return arrays.select(keep)


def column_bytes(rows: list[dict], fields: list, workdir: Path, tag: str) -> int:
    """Compressed bytes of the columns ``fields`` of ``rows``, in Parquet as the cache writer writes it (zstd at
    its level, its dictionary columns; Parquet footers)."""
    schema = pa.schema(fields)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{tag}.parquet"
    pq.write_table(table_from_rows(rows, schema), path, compression="zstd", compression_level=DEFAULT_COMPRESSION_LEVEL,
                   use_dictionary=dictionary_columns(schema), row_group_size=256)
    meta = pq.ParquetFile(path).metadata
    return sum(meta.row_group(g).column(c).total_compressed_size for g in range(meta.num_row_groups)
               for c in range(meta.num_columns))


def sparse_default(head: TeacherHead, hidden: torch.Tensor) -> tuple[SparseArrays, SparseCodec]:
    """The sparse default targets of the same teacher positions and their codec (id table from their ids)."""
    parts = []
    for start in range(0, len(hidden), 64):
        logits = ExactTeacher(hidden=hidden[start:start + 64], head=head).logits()
        found = sparse_targets(logits, torch.zeros(len(logits), dtype=torch.long), k=64, shared_vocab_size=SHARED,
                               temperatures=TEMPERATURES, policy=DEFAULT_POLICY)
        stored = torch.arange(64)[None, :] < found.counts.long()[:, None]
        parts.append(SparseArrays(found.counts.long().numpy(), found.topk_ids.long()[stored].numpy(),
                                  found.topk_values[stored].numpy(), found.log_tails.numpy(),
                                  found.gold_logprob.numpy()))
    arrays = SparseArrays.concat(parts, len(TEMPERATURES))
    ids, counts = np.unique(arrays.ids, return_counts=True)
    table = ids[np.lexsort((ids, -counts))][:4096].tolist()  # by frequency in this data, as a build counts
    return arrays, SparseCodec(ENCODING_PACKED, num_temperatures=len(TEMPERATURES), id_table=table, vocab_size=SHARED)


def measure_bytes(arrays: SparseArrays, codec: SparseCodec, hidden: torch.Tensor, workdir: Path) -> dict:
    n = len(hidden)
    per_row = [48] * (n // 48) + ([n % 48] if n % 48 else [])  # ~48 targets a row, as a 512-token row has
    schema = schema_for("shared", passes=["plain"], num_temperatures=len(TEMPERATURES))
    rows = [codec.encode(pick(arrays, n, part), "plain") for part in ranges(per_row)]
    sparse = column_bytes(rows, [schema.field(c) for c in codec.columns("plain")], workdir, "sparse") / n
    out = {"positions": n, "mean_k": float(arrays.counts.mean()), "sparse_default_bytes_per_position": sparse,
           "full_logits_bf16_bytes_per_position": 2 * SHARED, "full_logits_fp32_bytes_per_position": 4 * SHARED,
           "head_file_bytes": 2 * SHARED * TEACHER_HIDDEN}
    for encoding in (HIDDEN_BF16, HIDDEN_INT8):
        hcodec = HiddenCodec(encoding, TEACHER_HIDDEN)
        stored = hcodec.quantise(hidden.float().numpy())
        hrows = [hcodec.encode(pick(stored, n, part), "plain") for part in ranges(per_row)]
        size = column_bytes(hrows, hcodec.fields("plain"), workdir, encoding) / n
        out[f"exact_{encoding}_bytes_per_position"] = size
        out[f"exact_{encoding}_raw_bytes_per_position"] = bytes_per_item(hcodec)
        out[f"full_bf16_over_exact_{encoding}"] = 2 * SHARED / size
        out[f"exact_{encoding}_over_sparse_default"] = size / sparse
    return out


# ---------------------------------------------------------------------------------------------------- int8 KL


def int8_kl(head: TeacherHead, hidden: torch.Tensor) -> dict:
    codec = HiddenCodec(HIDDEN_INT8, TEACHER_HIDDEN)
    stored = codec.quantise(hidden.float().numpy())
    codes, scale = torch.from_numpy(stored.codes), torch.from_numpy(stored.scale)
    out = {}
    for temperature in TEMPERATURES:
        values = []
        for start in range(0, len(hidden), 32):
            part = slice(start, start + 32)
            full = ExactTeacher(hidden=hidden[part], head=head).logits() / temperature
            recon = ExactTeacher(hidden=codes[part], head=head, scale=scale[part]).logits() / temperature
            log_p, log_r = torch.log_softmax(full, -1), torch.log_softmax(recon, -1)
            values.append((log_p.exp() * (log_p - log_r)).sum(-1))
        kl = torch.cat(values).double()
        out[f"T{temperature:g}"] = {"mean": float(kl.mean()), "p99": float(kl.quantile(0.99)), "max": float(kl.max())}
    exact = hidden.float().numpy()
    relative = np.linalg.norm(stored.values() - exact, axis=1) / np.linalg.norm(exact, axis=1)
    out["hidden_relative_l2_error_mean"] = float(relative.mean())
    return out


# ---------------------------------------------------------------------------------------------------- step time


def student() -> torch.nn.Module:
    from tide.models.a2d_qwen3 import A2DQwen3Config, A2DQwen3LMHeadModel

    config = A2DQwen3Config(vocab_size=VOCAB_ROWS, hidden_size=STUDENT_HIDDEN, intermediate_size=3072,
                            num_hidden_layers=STUDENT_LAYERS, num_attention_heads=16, num_key_value_heads=8,
                            head_dim=64, tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return A2DQwen3LMHeadModel(config).float()


def base_rows(num_rows: int, seq_len: int, available: int, gen: np.random.Generator) -> list[dict]:
    """Training rows (the cache's base columns) whose masked positions are all target positions."""
    rows = []
    for index in range(num_rows):
        maskable = np.zeros(seq_len, dtype=bool)
        maskable[seq_len // 4:] = True
        t = float(gen.uniform(0.4, 0.9))
        masked = np.flatnonzero(maskable & (gen.random(seq_len) < t)).astype(np.int32)
        rows.append({"sample_id": f"bench:{index}", "replica": 0, "t": t, "maskable": maskable,
                     "input_ids": gen.integers(0, SHARED, seq_len).astype(np.int32), "masked_positions": masked,
                     "target_positions": masked})
    if sum(len(r["target_positions"]) for r in rows) > available:
        raise SystemExit("--rows x --seq-len need more target positions than --positions")
    return rows


def time_steps(model: torch.nn.Module, pipeline, rows: list[dict], mode: str, steps: int) -> dict:
    """Median wall time of ``steps`` BD3LM steps (forward, objective, backward) on one batch of ``rows``."""
    spec = CollateSpec(pad_token_id=EOS_ID, block_size=BLOCK, pipeline=pipeline, target_pass="plain")
    start = time.perf_counter()
    batch = collate_rows(rows, spec)
    decode = time.perf_counter() - start
    objective = Objective(mode=mode, options=LossOptions(temperature=2.0), shared_vocab_size=SHARED)
    step = StudentStep(objective, block_size=BLOCK, mask_token_id=MASK_ID, pipeline=pipeline)
    times = []
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        out = step(model, batch, progress=0.5)
        out.loss.backward()
        times.append(time.perf_counter() - start)
    return {"median_step_s": statistics.median(times), "min_step_s": min(times), "collate_s": decode,
            "loss": float(out.loss.detach()), "target_items": int(batch.vocab.row.numel())}


def measure_steps(head: TeacherHead, hidden: torch.Tensor, arrays: SparseArrays, codec: SparseCodec,
                  args: argparse.Namespace) -> dict:
    rows = base_rows(args.rows, args.seq_len, len(hidden), np.random.default_rng(0))
    parts = ranges([len(r["target_positions"]) for r in rows])
    n = len(hidden)
    variants = {"sparse_default": (SharedPipeline(codec=codec, temperatures=TEMPERATURES),
                                   [codec.encode(pick(arrays, n, p), "plain") for p in parts])}
    for encoding in (HIDDEN_BF16, HIDDEN_INT8):
        hcodec = HiddenCodec(encoding, TEACHER_HIDDEN)
        stored = hcodec.quantise(hidden.float().numpy())
        variants[f"exact_{encoding}"] = (ExactSharedPipeline(codec=hcodec, head=head),
                                         [hcodec.encode(pick(stored, n, p), "plain") for p in parts])
    model = student()
    out: dict = {"steps": {}}
    for mode in ("tidal", "kl"):
        for name, (pipeline, columns) in variants.items():
            timed = time_steps(model, pipeline, [{**r, **c} for r, c in zip(rows, columns, strict=True)], mode,
                               args.steps)
            out["steps"][f"{name}_{mode}"] = timed
            logger.info("%s %s: %.2f s a step", name, mode, timed["median_step_s"])
        for encoding in (HIDDEN_BF16, HIDDEN_INT8):
            out[f"exact_{encoding}_over_sparse_step_{mode}"] = (out["steps"][f"exact_{encoding}_{mode}"]["median_step_s"]
                                                                / out["steps"][f"sparse_default_{mode}"]["median_step_s"])
    # per target item: the teacher recompute 2·H_T·V (forward only, no gradient) against the student head's
    # 6·H_S·V (forward and its two backward products): what bounds the step on a GPU
    out["teacher_recompute_flops_over_student_head"] = (2 * TEACHER_HIDDEN) / (6 * STUDENT_HIDDEN)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, default=384, help="teacher positions for bytes and the int8 KL")
    parser.add_argument("--rows", type=int, default=2, help="rows of the timed training batch")
    parser.add_argument("--seq-len", type=int, default=96, help="student sequence length of the timed batch")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--output", default=str(RESULTS), help="where to write the JSON results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    gen = torch.Generator().manual_seed(0)
    head = teacher_head(gen)
    results: dict = {
        "config": {"shared_vocab": SHARED, "vocab_rows": VOCAB_ROWS, "teacher_hidden": TEACHER_HIDDEN,
                   "student_hidden": STUDENT_HIDDEN, "student_layers": STUDENT_LAYERS, "positions": args.positions,
                   "rows": args.rows, "seq_len": args.seq_len, "steps": args.steps, "logit_std": LOGIT_STD,
                   "step_temperature": 2.0, "device": "cpu", "threads": torch.get_num_threads(),
                   "sparse_default": "mass 0.9 at T = 1, k 16..64, rank24-delta8"},
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "processor": platform.processor() or platform.machine()},
        "families": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("gaussian", "outliers"):
            hidden = hidden_states(args.positions, family, gen)
            arrays, codec = sparse_default(head, hidden)
            logger.info("family %s: bytes and int8 KL", family)
            results["families"][family] = {"bytes": measure_bytes(arrays, codec, hidden, Path(tmp) / family),
                                           "int8_kl": int8_kl(head, hidden)}
            if family == "gaussian":
                results.update(measure_steps(head, hidden, arrays, codec, args))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
