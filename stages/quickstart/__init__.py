"""The quickstart: two small teachers taught a toy task, then both pipelines end to end on them, driven
through the real CLIs.

``bash scripts/quickstart.sh`` runs ``python -m stages.quickstart``, which, under one output directory
(``quickstart_out/`` by default):

1. writes the chat data as JSONL: generated letter-shift questions (five letters, each shifted to the next)
   (``--humaneval N`` adds HumanEval problems with their solutions), and a held-out task (lm-eval YAML + JSONL) of
   letter-shift questions no model trains on;
2. trains two BPE tokenizers on the chats and builds the student (``a2d-qwen3``), a WeDLM-layout teacher with
   the student's vocabulary under another template (pipeline B, ``shared``) and a LLaDA2-MoE teacher with a
   Llama-3-style vocabulary (pipeline A, ``cross``) — :mod:`tide.testing`;
3. pre-trains both teachers on the chats (:mod:`stages.pretrain`) and scores them on the held-out questions;
4. runs ``tide-cache build`` once per pipeline and ``tide-cache inspect`` on each cache;
5. runs ``tide-train`` from the same initial student: CE only, and each pipeline's native mode and baseline
   (A: ``reverse_calm`` = TIDE-Cross vs ``calm``; B: ``tidal --comp_demo`` = TIDE-Shared vs ``kl``);
6. scores every student on the held-out questions with the teachers' score (greedy infilling of the answer);
7. runs ``tide-eval run`` on the held-out task for the native-mode students (``--eval-baselines``: the
   baseline students too);

and prints where the caches, checkpoints, loss curves and results are, a table of teachers and students,
and a pandas one-liner to open a shard; the same summary is written to ``summary.json``.

Every CLI runs as a subprocess (its full output goes to ``logs/<step>.log``); the command lines are printed,
so each step can be re-run by hand.

Modules, one job each: ``config`` (the run's sizes, its training runs, where it writes), ``inputs`` (data
files, tokenizers and models, from :mod:`tide.testing`), ``heldout`` (teacher pre-training, the held-out
score), ``commands`` (the CLI command lines), ``cli_runner``
(running one CLI with its log), ``results`` (reading what the CLIs wrote, the closing summary), ``driver``
(the steps in order, the argument parser and ``main``; ``__main__`` runs it).
"""
