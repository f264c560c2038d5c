"""The ``tide-eval`` command.

* ``tide-eval run --model PATH --tasks all|t1,t2 --output DIR [--limit N]``: the paper's benchmarks
  (DESIGN.md §7) through lm-eval with the ``tide_bd3lm`` model; one result directory per task, a summary
  table (task, metric, score) and the average printed at the end.
* ``tide-eval generate`` (alias ``chat``): completions for a prompt or a file of prompts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from stages.eval.protocol import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_CFG_SCALE,
    DEFAULT_REMASKING,
    DEFAULT_TEMPERATURE,
    PAPER_TASKS,
    THINK_BLOCK,
    resolve_tasks,
)

logger = logging.getLogger(__name__)


def _task_table() -> str:
    lines = ["protocol (task: gen length / steps / shots, reported metric):"]
    for s in PAPER_TASKS:
        lines.append(f"  {s.task}: {s.gen_length} / {s.steps} / {s.num_fewshot}-shot, {s.metric}")
    return "\n".join(lines)


def _add_generation_options(parser: argparse.ArgumentParser, *, with_lengths: bool) -> None:
    group = parser.add_argument_group("generation (tide.sampler)")
    group.add_argument("--model", required=True, help="student checkpoint directory (save_pretrained layout)")
    group.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE,
                       help="tokens per diffusion block; prompts are left-padded to a multiple of it (default 32)")
    if with_lengths:
        group.add_argument("--gen-length", type=int, default=256, help="tokens to generate (default 256)")
        group.add_argument("--steps", type=int, default=256,
                           help="denoising steps in total; steps per block = steps // blocks (default 256)")
    group.add_argument("--remasking", choices=("low_confidence", "random"), default=DEFAULT_REMASKING,
                       help="which masked positions a step commits: the most confident or random ones")
    group.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                       help="0 = greedy (argmax); > 0 = Gumbel-max sampling at this temperature (default 0)")
    group.add_argument("--cfg-scale", type=float, default=DEFAULT_CFG_SCALE,
                       help="classifier-free guidance scale; unconditional input = prompt masked (default 0)")
    group.add_argument("--seed", type=int, default=1234, help="seed of the sampler's noise and of lm-eval")
    group.add_argument("--think-block", action=argparse.BooleanOptionalAction, default=False,
                       help=f"append an empty think block {THINK_BLOCK!r} after the (templated) prompt; off by "
                            "default (the paper's harness injected one)")
    group.add_argument("--batch-size", type=int, default=1, help="prompts generated together (default 1)")
    group.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    group.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                       help="model dtype (auto = bfloat16 on GPU, float32 on CPU)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tide-eval",
        description="Evaluate a TIDE block-diffusion student (lm-eval model `tide_bd3lm`) or generate with it.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run benchmarks through lm-eval and print a (task, metric, score) table",
        description="Run the paper's benchmarks (or chosen lm-eval tasks) with per-task generation settings.",
        epilog=_task_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_generation_options(run, with_lengths=False)
    run.add_argument("--tasks", default="all",
                     help="`all` (the eight paper benchmarks) or a comma-separated list of lm-eval task names; "
                          "paper tasks use their protocol gen length/steps/shots, others 256/256/0-shot")
    run.add_argument("--output", required=True, help="output directory: <task>/results.json, samples.jsonl")
    run.add_argument("--limit", type=float, default=None,
                     help="evaluate only the first N documents per (sub)task (N < 1: a fraction); for testing")
    run.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=True,
                     help="apply the tokenizer's chat template (few-shot examples as multi-turn); default on")
    run.add_argument("--include-path", action="append", default=[],
                     help="extra directory of lm-eval task YAMLs (repeatable)")
    run.add_argument("--confirm-run-unsafe-code", action="store_true",
                     help="allow tasks that execute generated code (humaneval_instruct, mbpp_instruct)")
    run.add_argument("--bootstrap-iters", type=int, default=0, help="lm-eval bootstrap iterations for stderr")
    run.set_defaults(func=cmd_run)

    for name in ("generate", "chat"):
        gen = sub.add_parser(name, help="print completions for a prompt or a file of prompts")
        _add_generation_options(gen, with_lengths=True)
        source = gen.add_mutually_exclusive_group(required=True)
        source.add_argument("--prompt", help="one prompt")
        source.add_argument("--prompt-file", help="text file with one prompt per line, or .jsonl with a "
                                                  "'prompt' field per line")
        gen.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=True,
                         help="wrap each prompt as a user turn with the chat template (default on)")
        gen.set_defaults(func=cmd_generate)
    return parser


def _read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt is not None:
        return [args.prompt]
    path = Path(args.prompt_file)
    if not path.is_file():
        raise FileNotFoundError(f"--prompt-file {path} does not exist")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            record = json.loads(line)
            if "prompt" not in record:
                raise ValueError(f"{path}:{number}: JSON line has no 'prompt' field")
            prompts.append(str(record["prompt"]))
        else:
            prompts.append(line)
    if not prompts:
        raise ValueError(f"--prompt-file {path} holds no prompts")
    return prompts


def _make_lm(args: argparse.Namespace, *, gen_length: int, steps: int):
    from stages.eval.lm_eval_model import TideBD3LM

    return TideBD3LM(
        pretrained=args.model, block_size=args.block_size, steps=steps, gen_length=gen_length,
        cfg_scale=args.cfg_scale, remasking=args.remasking, temperature=args.temperature,
        think_block=args.think_block, batch_size=args.batch_size, seed=args.seed, dtype=args.dtype,
        device=args.device,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from stages.eval.runner import build_task_manager, format_table, run_task, write_summary

    settings = resolve_tasks(args.tasks)
    if args.confirm_run_unsafe_code:
        os.environ.setdefault("HF_ALLOW_CODE_EVAL", "1")
    lm = _make_lm(args, gen_length=settings[0].gen_length, steps=settings[0].steps)
    manager = build_task_manager(args.include_path)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    scores = []
    for setting in settings:
        scores.append(
            run_task(
                lm, setting, output, task_manager=manager, apply_chat_template=args.chat_template,
                limit=args.limit, confirm_run_unsafe_code=args.confirm_run_unsafe_code,
                bootstrap_iters=args.bootstrap_iters,
            )
        )
    write_summary(scores, output)
    print(format_table(scores))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    lm = _make_lm(args, gen_length=args.gen_length, steps=args.steps)
    prompts = _read_prompts(args)
    contexts = [
        lm.apply_chat_template([{"role": "user", "content": p}]) if args.chat_template else p for p in prompts
    ]
    config = lm.settings
    encoded = [lm.encode_prompt(c, config.gen_length) for c in contexts]
    for start in range(0, len(encoded), lm.batch_size):
        result = lm.sampler.generate(encoded[start:start + lm.batch_size], config)
        for prompt, ids in zip(prompts[start:start + lm.batch_size], result.sequences, strict=True):
            print(f"### prompt\n{prompt}\n### completion\n{lm.decode(ids, [])}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
