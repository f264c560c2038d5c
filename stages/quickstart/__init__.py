"""The quickstart: both pipelines end to end on tiny local models, driven through the real CLIs.

``bash scripts/quickstart.sh`` runs ``python -m stages.quickstart``, which, under one output directory
(``quickstart_out/`` by default):

1. builds the tiny models with :mod:`tide.testing.tiny_models` — the student (``a2d-qwen3``, Qwen vocabulary),
   a LLaDA2-MoE teacher with the Llama-3 tokenizer (the foreign teacher of pipeline A, ``cross``) and a
   WeDLM teacher (Qwen3 weights, Qwen vocabulary, another chat template; pipeline B, ``shared``);
2. writes the chat data as JSONL: HumanEval problems with their solutions plus a small generated set
   (:func:`tide.testing.chat_data.humaneval_chat`), and a held-out evaluation task (generated arithmetic
   questions, lm-eval YAML + JSONL, scored offline by exact match of the last number of the answer);
3. runs ``tide-cache build`` once per pipeline and ``tide-cache inspect`` on each cache;
4. runs ``tide-train`` for a few steps of each pipeline's native mode and of its baseline (A: ``reverse_calm``
   = TIDE-Cross vs ``calm``; B: ``tidal --comp_demo`` = TIDE-Shared vs ``kl``);
5. runs ``tide-eval run`` on the evaluation task for the native-mode students (``--eval-baselines``: the
   baseline students too);
6. prints where the caches, checkpoints, loss curves and results are, a table of the runs, and a pandas
   one-liner to open a shard; the same summary is written to ``summary.json``.

Every CLI runs as a subprocess (its full output goes to ``logs/<step>.log``); the command lines are printed,
so each step can be re-run by hand.

Modules, one job each: ``config`` (the run's sizes, its training runs, where it writes), ``inputs`` (tiny
models and data files, from :mod:`tide.testing`), ``commands`` (the CLI command lines), ``cli_runner``
(running one CLI with its log), ``results`` (reading what the CLIs wrote, the closing summary), ``driver``
(the steps in order, the argument parser and ``main``; ``__main__`` runs it).
"""
