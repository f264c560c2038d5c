"""The ``tide-eval`` command.

* ``tide-eval run --model PATH --tasks all|t1,t2 --output DIR [--limit N]``: the paper's benchmarks
  (docs/design.md#evaluation-protocol) through lm-eval with the ``tide_bd3lm`` model; one result directory per task, a summary
  table (task, metric, score) and the average printed at the end.
* ``tide-eval generate`` (alias ``chat``): completions for a prompt or a file of prompts.

Both take the sampler options of :class:`stages.eval.config.GenerationConfig` (``--sampling-temperature``,
``--cfg-scale``, ...) as flags or from a YAML ``--config``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from stages.cli_support import EXIT_USAGE, add_version, debug_requested, run_reporting_errors
from stages.eval.config import GenerateConfig, GenerationConfig, RunConfig
from stages.eval.protocol import PAPER_TASKS, resolve_tasks
from stages.options import OptionsError, add_options, options_from_args

logger = logging.getLogger(__name__)


def _task_table() -> str:
    lines = ["protocol (task: gen length / steps / shots, reported metric):"]
    for s in PAPER_TASKS:
        lines.append(f"  {s.task}: {s.gen_length} / {s.steps} / {s.num_fewshot}-shot, {s.metric}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tide-eval",
        description="Evaluate a TIDE block-diffusion student (lm-eval model `tide_bd3lm`) or generate with it.",
    )
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run benchmarks through lm-eval and print a (task, metric, score) table",
        description="Run the paper's benchmarks (or chosen lm-eval tasks) with per-task generation settings.",
        epilog=_task_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_options(run, RunConfig)
    run.add_argument("--debug", action="store_true", help="show the full traceback when the command fails")
    run.set_defaults(func=cmd_run, options=RunConfig)

    for name in ("generate", "chat"):
        gen = sub.add_parser(name, help="print completions for a prompt or a file of prompts", allow_abbrev=False)
        add_options(gen, GenerateConfig)
        gen.add_argument("--debug", action="store_true", help="show the full traceback when the command fails")
        gen.set_defaults(func=cmd_generate, options=GenerateConfig)
    return parser


def config_from_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, GenerationConfig]:
    """The parsed command line and its validated config (RunConfig or GenerateConfig).

    Raises :class:`~stages.options.OptionsError` listing every problem at once.
    """
    args = build_parser().parse_args(argv)
    return args, options_from_args(args.options, args, finish=args.options.validate)


def _read_prompts(config: GenerateConfig) -> list[str]:
    if config.prompt is not None:
        return [config.prompt]
    path = Path(config.prompt_file)
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


def check_model_path(model: str) -> None:
    """``--model`` must be a student directory (config.json) or a LoRA adapter directory."""
    path = Path(model)
    if not path.is_dir():
        raise FileNotFoundError(f"--model {model}: no such directory; give a trained student's directory "
                                "(tide-train's --output) or its adapter/ directory")
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"--model {model}: neither a model (no config.json) nor LoRA adapters "
                                "(no adapter_config.json)")


def check_task_names(settings: list, manager) -> None:
    """Refuse task names lm-eval does not know, with the closest known name, before the model loads."""
    import difflib

    known = set(manager.all_tasks)
    for setting in settings:
        if setting.task not in known:
            close = difflib.get_close_matches(setting.task, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else " (see `lm_eval ls tasks`, or add --include-path)"
            raise ValueError(f"--tasks: lm-eval has no task {setting.task!r}{hint}")


def _make_lm(config: GenerationConfig, *, gen_length: int, steps: int):
    from stages.eval.lm_eval_model import TideBD3LM
    from tide.runtime import resolve_device

    check_model_path(config.model)
    resolve_device(config.device)  # a CUDA request on a machine without CUDA fails here, in one line

    return TideBD3LM(
        pretrained=config.model, block_size=config.block_size, steps=steps, gen_length=gen_length,
        cfg_scale=config.cfg_scale, remasking=config.remasking, temperature=config.sampling_temperature,
        think_block=config.think_block, batch_size=config.batch_size, seed=config.seed, dtype=config.dtype,
        device=config.device,
    )


def cmd_run(config: RunConfig) -> int:
    from stages.eval.runner import build_task_manager, format_table, run_task, write_summary

    settings = resolve_tasks(config.tasks)
    check_model_path(config.model)
    if config.confirm_run_unsafe_code:
        os.environ.setdefault("HF_ALLOW_CODE_EVAL", "1")
    manager = build_task_manager(config.include_path)
    check_task_names(settings, manager)
    lm = _make_lm(config, gen_length=settings[0].gen_length, steps=settings[0].steps)
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    scores = []
    for setting in settings:
        scores.append(
            run_task(
                lm, setting, output, task_manager=manager, apply_chat_template=config.chat_template,
                limit=config.limit, confirm_run_unsafe_code=config.confirm_run_unsafe_code,
                bootstrap_iters=config.bootstrap_iters,
            )
        )
    write_summary(scores, output)
    print(format_table(scores))
    return 0


def cmd_generate(config: GenerateConfig) -> int:
    lm = _make_lm(config, gen_length=config.gen_length, steps=config.steps)
    prompts = _read_prompts(config)
    contexts = [
        lm.apply_chat_template([{"role": "user", "content": p}]) if config.chat_template else p for p in prompts
    ]
    settings = lm.settings
    encoded = [lm.encode_prompt(c, settings.gen_length) for c in contexts]
    for start in range(0, len(encoded), lm.batch_size):
        result = lm.sampler.generate(encoded[start:start + lm.batch_size], settings)
        for prompt, ids in zip(prompts[start:start + lm.batch_size], result.sequences, strict=True):
            print(f"### prompt\n{prompt}\n### completion\n{lm.decode(ids, [])}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args, config = config_from_args(argv)
    except OptionsError as exc:
        print(f"tide-eval: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run_reporting_errors("tide-eval", lambda: int(args.func(config) or 0),
                                debug=getattr(args, "debug", False) or debug_requested(argv))


if __name__ == "__main__":
    sys.exit(main())
