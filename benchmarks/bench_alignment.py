"""Preparation time per sample against content length, 64 KiB to 8 MiB, both pipelines: tokenisation and
alignment stay flat; only whole-content hashing and the UTF-8 check grow, at a few ns to 30 ns per byte.

One chat sample — a short question and an answer of S bytes of generated text (words, digits, code-like
lines; one JSONL line holds all of it) — is prepared by the build (``prepare_sample``: message checks,
sample key, content cut, chat tokenisation on both sides, maskable positions, alignment) for S = 64 KiB
... 8 MiB, with the paper's lengths (student 512; teacher 768 for shared, 1024 for cross), the Qwen
vocabulary for the student, a Qwen-vocabulary teacher (pipeline B) and the Llama-3 tokenizer standing in for
LLaDA2's (pipeline A). The content is cut to what the sequences can hold before tokenisation
(``tide.alignment.content_budget``), so tokenisation and alignment do not grow with S. One step still reads
the whole content: the sample key (``tide.noise.sample_key``, a hash of the whole conversation — the sample's
identity for noise, held-out split and duplicates), timed on its own and reported next to the total. The
figures also show the preparation without the cut (the whole content tokenised and aligned) at the smaller
sizes, and check that both give the same sample.

    .venv/bin/python benchmarks/bench_alignment.py [--sizes-kib 64 256 1024 2048 8192] [--repeats 3]

Prints the figures and writes ``benchmarks/results/alignment.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

from stages.cache_build import preparation
from stages.cache_build.preparation import PreparationSettings, prepare_sample
from stages.cache_build.sources import RawSample
from tide.noise import sample_key
from tide.testing.tokenizers import CHATML_WITH_SYSTEM_TEMPLATE, build_llama3_tokenizer, build_qwen_tokenizer

logger = logging.getLogger("bench_alignment")

STUDENT_LENGTH = 512
TEACHER_LENGTHS = {"shared": 768, "cross": 1024}
BLOCK = 32
WORDS = ("the", "value", "of", "x", "is", "returned", "when", "list", "index", "def", "return", "for", "in",
         "range(n):", "if", "else:", "print(total)", "élan", "naïve", "数据", "分析", "and", "42", "3.14159", "#",
         "assert", "result", "==", "expected", "while", "True:")


def generated_text(num_bytes: int, seed: int = 0) -> str:
    """About ``num_bytes`` UTF-8 bytes of word salad with spaces, newlines and indented code-like lines."""
    rng = np.random.default_rng(seed)
    words = np.asarray(WORDS, dtype=object)
    per_word = np.mean([len(w.encode("utf-8")) + 1 for w in WORDS])
    picks = words[rng.integers(0, len(WORDS), size=int(num_bytes / per_word) + 1)]
    breaks = rng.random(picks.shape[0]) < 0.08
    text = "".join(f"{w}\n    " if b else f"{w} " for w, b in zip(picks.tolist(), breaks.tolist(), strict=True))
    return text.encode("utf-8")[:num_bytes].decode("utf-8", errors="ignore")


def timed(function, repeats: int) -> tuple[float, object]:
    """(median seconds, last result) over ``repeats`` calls."""
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def same_sample(a, b) -> bool:
    """Whether two prepared samples hold the same sequences, trained positions and alignment."""
    fields = ["input_ids", "maskable", "teacher_input_ids", "student_pos", "teacher_pos"]
    equal = all((getattr(a, f) is None and getattr(b, f) is None) or np.array_equal(getattr(a, f), getattr(b, f))
                for f in fields)
    if a.chunks is not None:
        equal &= all(np.array_equal(getattr(a.chunks, f), getattr(b.chunks, f))
                     for f in ("student_start", "student_end", "teacher_start", "teacher_end"))
    return bool(equal)


def run(sizes_kib: list[int], uncut_kib: list[int], repeats: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bench_alignment_"))
    student = build_qwen_tokenizer(root / "student")
    teachers = {"shared": build_qwen_tokenizer(root / "wedlm", chat_template=CHATML_WITH_SYSTEM_TEMPLATE),
                "cross": build_llama3_tokenizer(root / "llama3")}
    texts = {size: generated_text(size * 1024) for size in sorted(set(sizes_kib) | set(uncut_kib))}
    out: dict = {"config": {"student_length": STUDENT_LENGTH, "teacher_lengths": TEACHER_LENGTHS, "block": BLOCK,
                            "sizes_kib": sizes_kib, "uncut_sizes_kib": uncut_kib, "repeats": repeats,
                            "student_tokenizer": "Qwen3 vocabulary (ChatML)",
                            "teacher_tokenizers": {"shared": "Qwen3 vocabulary (ChatML with system turn)",
                                                   "cross": "Llama-3 (stands in for LLaDA2's)"}},
                  "pipelines": {}}
    for pipeline, teacher in teachers.items():
        settings = PreparationSettings(pipeline=pipeline, block_size=BLOCK, max_length=STUDENT_LENGTH,
                                       teacher_max_length=TEACHER_LENGTHS[pipeline])

        def messages(text: str) -> list[dict[str, str]]:
            return [{"role": "user", "content": "Explain the following at length."},
                    {"role": "assistant", "content": text}]

        def prepare(text: str, settings=settings, teacher=teacher):
            return prepare_sample(RawSample("bench:0", messages(text)), student, teacher, settings)

        prepare(texts[min(texts)])  # warm the byte tables and tokenizer caches
        rows = []
        for size in sizes_kib:
            seconds, sample = timed(lambda size=size: prepare(texts[size]), repeats)
            key_seconds, _ = timed(lambda size=size: sample_key(messages(texts[size])), repeats)
            rows.append({"content_kib": size, "seconds_per_sample": seconds, "sample_key_seconds": key_seconds,
                         "seconds_without_sample_key": seconds - key_seconds, "student_tokens": sample.length,
                         "teacher_tokens": int(sample.teacher_input_ids.shape[0]),
                         "cut_characters": sample.content_cuts[1], "student_tokens_cut": sample.student_tokens_cut})
            print(f"{pipeline:6s} {size:6d} KiB: {seconds * 1000:8.1f} ms per sample, of which the sample key "
                  f"{key_seconds * 1000:6.1f} ms (cut {sample.content_cuts[1]:,} characters)", flush=True)
        uncut = []
        for size in uncut_kib:
            with mock.patch.object(preparation, "cut_contents", lambda messages, sides, **_: (list(messages), [])):
                seconds, whole = timed(lambda size=size: prepare(texts[size]), 1)
            identical = same_sample(whole, prepare(texts[size]))
            uncut.append({"content_kib": size, "seconds_per_sample": seconds, "same_sample_as_cut": identical})
            print(f"{pipeline:6s} {size:6d} KiB without the cut: {seconds * 1000:8.1f} ms per sample, same sample: "
                  f"{identical}", flush=True)
        times = [r["seconds_per_sample"] for r in rows]
        rest = [r["seconds_without_sample_key"] for r in rows]
        out["pipelines"][pipeline] = {
            "sizes": rows, "uncut": uncut,
            "largest_over_smallest": times[-1] / times[0] if times[0] else None,
            "max_over_min": max(times) / min(times) if min(times) else None,
            "without_sample_key_max_over_min": max(rest) / min(rest) if min(rest) > 0 else None,
        }
    out["machine"] = {"python": platform.python_version(), "processor": platform.processor() or platform.machine()}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-kib", type=int, nargs="+", default=[64, 256, 1024, 2048, 8192])
    parser.add_argument("--uncut-kib", type=int, nargs="*", default=[64, 512],
                        help="sizes also prepared without the content cut (slow: the whole content is tokenised)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/alignment.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(args.sizes_kib, args.uncut_kib, args.repeats)
    for pipeline, data in result["pipelines"].items():
        print(f"{pipeline}: time at {args.sizes_kib[-1]} KiB / at {args.sizes_kib[0]} KiB = "
              f"{data['largest_over_smallest']:.2f}; max / min over the sizes = {data['max_over_min']:.2f}, "
              f"without the sample key {data['without_sample_key_max_over_min']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
