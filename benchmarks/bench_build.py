"""Stage-one build overhead: build wall time over the bare teacher forward time of the same batches.

Method: a CPU-sized WeDLM-class teacher (real 151,936-row vocabulary, small hidden size) is built with the
one tiny-model builder (:mod:`tide.testing.tiny_models`); ``run_build`` builds a pipeline-B cache (plain + CompDemo passes, k = 64, fp16 values).
Then the exact teacher batches of that build are rebuilt (same noise, same packing) and only the runner
call (forward + LM head + top-k targets) is timed. The ratio is build wall time (data preparation, noise,
packing, teacher, row assembly, compression and writing; the teacher load and the data counting pass are
reported separately) over that bare time. Also reported: samples/s and bytes per masked position.

Run: ``.venv/bin/python benchmarks/bench_build.py`` (writes benchmarks/results/build.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from stages.cache_build.config import BuildConfig
from stages.cache_build.passes import pack_batches, pad_batch
from stages.cache_build.run import run_build
from stages.cache_build.shard_builder import ShardBuilder
from stages.cache_build.shard_layout import ShardLayout
from stages.cache_build.survey import iter_prepared, load_or_make_survey, load_tokenizers
from tide.testing.chat_data import humaneval_messages, synthetic_messages, write_chat_jsonl
from tide.testing.tiny_models import build_tiny_model
from tide.testing.tokenizers import CHATML_WITH_SYSTEM_TEMPLATE, build_qwen_tokenizer


def bare_teacher_seconds(config: BuildConfig, survey: dict, student_tok, teacher_tok) -> tuple[float, int]:
    """Time only the runner calls over the build's own batches (inputs prepared beforehand)."""
    config = config.resolve()
    builder = ShardBuilder(config, survey, torch.device(config.device))
    layout = ShardLayout(survey["num_samples"], config.replicas, config.rows_per_shard)
    samples = list(iter_prepared(config, student_tok, teacher_tok))
    total, forwards = 0.0, 0
    for shard in range(layout.num_shards):
        units = [(samples[s], r) for s, r in (layout.unit(u) for u in layout.shard_units(shard))]
        requests = []
        for index, (sample, replica) in enumerate(units):
            noise = builder.pipeline.draw_noise(sample, replica, seed=config.seed, eps=config.eps,
                                                demo_ratio=config.demo_ratio, compdemo=True)
            requests += builder.pipeline.requests(index, sample, noise, kinds=builder.kinds,
                                                  teacher_mask_id=builder.runner.mask_token_id)
        for batch in pack_batches(requests, batch_tokens=config.batch_tokens, batch_rows=config.batch_rows,
                                  cost_factor=builder.cost_factor):
            arrays = pad_batch(batch, builder.pad_id)
            args = [torch.from_numpy(a) for a in (arrays.noised, arrays.lengths, arrays.row_index,
                                                  arrays.position, arrays.gold)]
            start = time.perf_counter()
            builder.runner.topk_targets(*args, k=config.k, temperatures=config.temperatures,
                                        clean_ids=torch.from_numpy(arrays.clean))
            total += time.perf_counter() - start
            forwards += len(batch)
    return total, forwards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256, help="teacher hidden size")
    parser.add_argument("--layers", type=int, default=4, help="teacher layers")
    parser.add_argument("--sources", default=None,
                        help="source spec (default: 24 generated pairs then 12 HumanEval pairs, written as JSONL)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="build and bare runs alternate this many times; the minimum of each is kept "
                             "(a shared machine's load varies between runs)")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--output", default="benchmarks/results/build.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_qwen_tokenizer(root / "student")
        teacher_tokenizer = build_qwen_tokenizer(root / "wedlm_tok", chat_template=CHATML_WITH_SYSTEM_TEMPLATE)
        build_tiny_model("wedlm", root / "teacher", tokenizer=teacher_tokenizer, hidden_size=args.hidden,
                         num_layers=args.layers)
        sources = args.sources or str(
            write_chat_jsonl(root / "chat.jsonl", synthetic_messages(24) + humaneval_messages(12))
        )
        config = BuildConfig(
            teacher=str(root / "teacher"), student_tokenizer=str(root / "student"), sources=sources,
            output=str(root / "cache"), max_length=args.max_length, teacher_max_length=args.max_length + 64,
            replicas=args.replicas, k=64, value_dtype="float16", rows_per_shard=32, batch_tokens=8192,
            device="cpu", progress=False,
        )
        resolved = config.resolve()
        student_tok, teacher_tok = load_tokenizers(resolved)
        start = time.perf_counter()
        survey = load_or_make_survey(resolved, student_tok, teacher_tok)  # counting pass (once per build)
        plan_seconds = time.perf_counter() - start
        builds, bares, inside = [], [], []
        for _ in range(args.repeats):
            for shard_file in (root / "cache" / "data").glob("shard-*"):  # keep the survey, rebuild every shard
                shard_file.unlink()
            for record in (root / "cache" / "progress").glob("shard-*.json"):
                record.unlink()
            (root / "cache" / "manifest.json").unlink(missing_ok=True)
            start = time.perf_counter()
            run_build(config)
            builds.append(time.perf_counter() - start)
            manifest = json.loads((root / "cache" / "manifest.json").read_text())
            stats = manifest["build"]["stats"]
            inside.append(stats["teacher_seconds"])
            bare, forwards = bare_teacher_seconds(config, survey, student_tok, teacher_tok)
            bares.append(bare)
        start = time.perf_counter()
        ShardBuilder(resolved, survey, torch.device("cpu"))
        load_seconds = time.perf_counter() - start
        build_seconds, bare = min(builds), min(bares)

    loop_seconds = build_seconds - load_seconds
    result = {
        "teacher": {"hidden": args.hidden, "layers": args.layers, "vocab_rows": 151_936},
        "samples": stats["samples"],
        "rows": stats["rows"],
        "teacher_forwards": forwards,
        "counting_pass_seconds": plan_seconds,
        "teacher_load_seconds": load_seconds,
        "build_wall_seconds": build_seconds,
        "build_wall_without_teacher_load_seconds": loop_seconds,
        "bare_teacher_seconds": bare,
        "teacher_seconds_inside_build": min(inside),
        "build_runs_seconds": builds,
        "bare_runs_seconds": bares,
        "build_over_bare_teacher": loop_seconds / bare,
        "target_build_over_bare_teacher": 1.15,
        "samples_per_second": stats["samples"] / build_seconds,
        "bytes_per_masked_position": stats["bytes_per_masked_position"],
        "bytes_per_target": stats["bytes_per_target"],
        "mean_tail_mass": stats["mean_tail_mass"],
        "padding_efficiency": stats["padding_efficiency"],
        "torch_threads": torch.get_num_threads(),
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
