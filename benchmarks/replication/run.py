"""The replication, stage by stage; every stage's result is stored under ``--output`` and skipped on rerun.

Stages: data → tokenizers → select → teacher_shared / teacher_cross → cache_shared / cache_cross /
cache_shared_full → cache_shared_exact → init → modes (every mode × seed) → compare (online vs cached) → report.
``python -m benchmarks.replication.run --output DIR [--quick]``; ``scripts/replicate.sh`` is the one
command that runs the full version and writes ``docs/fidelity.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.replication import data as rdata
from benchmarks.replication.config import FULL, QUICK, ReplicationConfig
from cache_schema.files import atomic_write_text
from stages.pretrain import scores as rscore
from stages.pretrain import teacher_training as rtrain
from tide.testing import bpe_tokenizers as rtok
from tide.testing import model_sizes as rmodels
from tide.testing.chat_data import read_chat_jsonl

logger = logging.getLogger("replication")

# (label, pipeline of the cache, tide-train mode, comp_demo)
MODES: tuple[tuple[str, str, str, bool], ...] = (
    ("ce", "shared", "ce", False),
    ("B: kl", "shared", "kl", False),
    ("B: tidal + CompDemo", "shared", "tidal", True),
    ("A: calm", "cross", "calm", False),
    ("A: reverse_calm", "cross", "reverse_calm", False),
)


class Runner:
    """Holds the output layout and runs each stage once (results in ``state/<stage>.json``)."""

    def __init__(self, output: Path, config: ReplicationConfig) -> None:
        self.out = output
        self.cfg = config
        (output / "state").mkdir(parents=True, exist_ok=True)
        stored = output / "state" / "config.json"
        if stored.is_file():
            previous = json.loads(stored.read_text())
            if previous != json.loads(json.dumps(config.as_dict())):
                raise SystemExit(f"{output} was run with a different configuration ({previous.get('name')}); "
                                 "use another --output")
        else:
            stored.write_text(json.dumps(config.as_dict(), indent=2))

    def stage(self, name: str, fn) -> dict[str, Any]:
        path = self.out / "state" / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        logger.info("=== stage %s", name)
        start = time.perf_counter()
        result = fn()
        result["wall_s"] = time.perf_counter() - start
        atomic_write_text(path, json.dumps(result, indent=2, default=float))
        logger.info("=== stage %s done in %.1f s", name, result["wall_s"])
        return result

    # ----------------------------------------------------------------------------------------- paths

    @property
    def tok_small(self) -> Path:
        return self.out / "tokenizers" / "small"

    @property
    def tok_large(self) -> Path:
        return self.out / "tokenizers" / "large"

    @property
    def tok_shared(self) -> Path:
        return self.out / "tokenizers" / "shared_teacher"

    def teacher_dir(self, pipeline: str) -> Path:
        return self.out / "teachers" / pipeline

    def cache_dir(self, name: str) -> Path:
        return self.out / "caches" / name

    # ----------------------------------------------------------------------------------------- stages

    def data(self) -> dict[str, Any]:
        pairs = rdata.stdlib_pairs(max_chars=self.cfg.max_chars)
        train, heldout = rdata.split_pairs(pairs, self.cfg.heldout_percent)
        rdata.write_jsonl([p.messages() for p in train], self.out / "data" / "train_all.jsonl",
                          [{"module": p.module, "qualname": p.qualname} for p in train])
        rdata.write_jsonl([p.messages() for p in heldout], self.out / "data" / "heldout_all.jsonl",
                          [{"module": p.module, "qualname": p.qualname} for p in heldout])
        humaneval = rdata.humaneval_conversations()
        rdata.write_jsonl(humaneval, self.out / "data" / "humaneval.jsonl")
        import sys

        return {
            "python": sys.version.split()[0], "stdlib": str(rdata.stdlib_root()),
            "pairs": len(pairs), "train_pairs": len(train), "heldout_pairs": len(heldout),
            "train_modules": len({p.module.split(".")[0] for p in train}),
            "heldout_modules": sorted({p.module.split(".")[0] for p in heldout}),
            "humaneval": len(humaneval),
        }

    def tokenizers(self) -> dict[str, Any]:
        conversations = read_chat_jsonl(self.out / "data" / "train_all.jsonl")
        texts = [m["content"] for conv in conversations for m in conv]
        small = rtok.train_bpe_tokenizer(texts, self.tok_small, vocab_size=self.cfg.vocab_small, kind="chatml")
        large = rtok.train_bpe_tokenizer(texts, self.tok_large, vocab_size=self.cfg.vocab_large, kind="llama3")
        rtok.shared_teacher_tokenizer(self.tok_small, self.tok_shared)
        sample = "\n".join(texts[:200])
        return {
            "small_ids": len(small), "large_ids": len(large), "shared_vocab_size": rtok.shared_vocab_size(small),
            "chars_per_token_small": len(sample) / len(small(sample)["input_ids"]),
            "chars_per_token_large": len(sample) / len(large(sample)["input_ids"]),
        }

    def _tokenizer(self, path: Path):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))

    def select(self) -> dict[str, Any]:
        """Training rows that no side truncates; evaluation sets that fit the student length."""
        cfg = self.cfg
        small, large, shared = (self._tokenizer(p) for p in (self.tok_small, self.tok_large, self.tok_shared))
        conversations = read_chat_jsonl(self.out / "data" / "train_all.jsonl")
        keep = []
        for index, conv in enumerate(conversations):
            fits = True
            for tok, limit in ((small, cfg.student_max_length), (shared, cfg.teacher_max_length),
                               (large, cfg.teacher_max_length)):
                encoded, _ = rtrain.encode([conv], tok, block_size=cfg.block_size, max_length=limit,
                                           source="x", require_complete=True)
                if not encoded:
                    fits = False
                    break
            if fits:
                keep.append(index)
        # The cache rows: a deterministic spread over the fitting training functions.
        picks = np.linspace(0, len(keep) - 1, num=min(cfg.train_samples, len(keep))).round().astype(int)
        cache_rows = [conversations[keep[i]] for i in sorted(set(picks.tolist()))]
        rdata.write_jsonl(cache_rows, self.out / "data" / "train.jsonl")
        teacher_pool = [conversations[i] for i in keep[: cfg.teacher_train_samples]]
        rdata.write_jsonl(teacher_pool, self.out / "data" / "teacher_train.jsonl")
        heldout = read_chat_jsonl(self.out / "data" / "heldout_all.jsonl")
        fit_heldout = []
        for conv in heldout:
            encoded, _ = rtrain.encode([conv], small, block_size=cfg.block_size, max_length=cfg.student_max_length,
                                       source="x", require_complete=True)
            if encoded:
                fit_heldout.append(conv)
        picks = np.linspace(0, len(fit_heldout) - 1, num=min(cfg.eval_samples, len(fit_heldout))).round().astype(int)
        rdata.write_jsonl([fit_heldout[i] for i in sorted(set(picks.tolist()))], self.out / "data" / "heldout.jsonl")
        return {"train_fitting": len(keep), "cache_rows": len(cache_rows), "teacher_pool": len(teacher_pool),
                "heldout_fitting": len(fit_heldout), "heldout_eval": min(cfg.eval_samples, len(fit_heldout))}

    def _eval_sets(self, tokenizer, max_length: int) -> dict[str, list[rtrain.Encoded]]:
        heldout = read_chat_jsonl(self.out / "data" / "heldout.jsonl")
        humaneval = read_chat_jsonl(self.out / "data" / "humaneval.jsonl")[: self.cfg.humaneval_samples]
        sets = {}
        sets["stdlib"], _ = rtrain.encode(heldout, tokenizer, block_size=self.cfg.block_size, max_length=max_length,
                                          source="heldout")
        sets["humaneval"], _ = rtrain.encode(humaneval, tokenizer, block_size=self.cfg.block_size,
                                             max_length=max_length, source="humaneval")
        return sets

    def teacher(self, pipeline: str) -> dict[str, Any]:
        cfg = self.cfg
        torch.manual_seed(0)
        if pipeline == "shared":
            tok = self._tokenizer(self.tok_shared)
            path = rmodels.build_model("wedlm", self.teacher_dir(pipeline) / "init", tok, cfg.shared_teacher,
                                       seed=0, mask_token_id=int(tok.mask_token_id),
                                       shared_vocab_size=rtok.shared_vocab_size(tok))
            family, regime = "wedlm", "paper"
        else:
            tok = self._tokenizer(self.tok_large)
            path = rmodels.build_model("llada2", self.teacher_dir(pipeline) / "init", tok, cfg.cross_teacher,
                                       seed=0, num_experts=cfg.cross_experts)
            family, regime = "llada2", "native"
        pool = read_chat_jsonl(self.out / "data" / "teacher_train.jsonl")
        teacher = rtrain.pretrain_checkpoint(
            path, self.teacher_dir(pipeline) / "final", pool, regime=regime, block_size=cfg.block_size,
            max_length=cfg.teacher_max_length, steps=cfg.teacher_steps, batch_size=cfg.teacher_batch,
            lr=cfg.teacher_lr, seed=0)
        model, forward = teacher.model, teacher.forward
        nll = {}
        for set_name, encoded in self._eval_sets(tok, cfg.teacher_max_length).items():
            nll[set_name] = {str(t): rscore.masked_nll(model, forward, encoded, t=t, mask_token_id=tok.mask_token_id,
                                                       pad_id=tok.pad_token_id) for t in cfg.nll_timesteps}
        return {"params": rmodels.count_parameters(model), "family": family, "regime": regime, "log": teacher.log,
                "heldout_nll": nll, "train_samples": teacher.train_samples, "path": str(teacher.path)}

    def cache(self, name: str, pipeline: str, **overrides: Any) -> dict[str, Any]:
        from stages.cache_build.config import BuildConfig
        from stages.cache_build.run import run_build

        cfg = self.cfg
        settings = dict(
            teacher=str(self.teacher_dir(pipeline) / "final"), student_tokenizer=str(self.tok_small),
            sources=str(self.out / "data" / "train.jsonl"), output=str(self.cache_dir(name)), pipeline=pipeline,
            max_length=cfg.student_max_length, teacher_max_length=cfg.teacher_max_length,
            block_size=cfg.block_size, k=cfg.k, replicas=cfg.replicas, seed=0,
            passes=["plain", "compdemo"], regime="paper" if pipeline == "shared" else "native",
            rows_per_shard=256, rows_per_row_group=64, device="cpu", dtype="float32", progress=False,
            temperatures=[1.0, 2.0] if pipeline == "shared" else [1.0],
        )
        settings.update(overrides)
        manifest_path = run_build(BuildConfig(**settings))
        manifest = json.loads(Path(manifest_path).read_text())
        size = sum(f.stat().st_size for f in self.cache_dir(name).glob("data/shard-*"))
        from cache_schema.reader import CacheReader

        k, values, _ = describe_targets(CacheReader(str(self.cache_dir(name))).manifest)
        return {"manifest": str(manifest_path), "rows": sum(s["rows"] for s in manifest["shards"]),
                "k": k, "values": values,
                "bytes": size, "build_stats": manifest.get("build", {}).get("stats", manifest.get("build", {}))}

    def train_student(self, output: Path, *, cache: str, mode: str, comp_demo: bool, steps: int, lr: float,
                      seed: int, student: Path, log_every: int = 5,
                      stream_class: type | None = None) -> dict[str, Any]:
        from stages.train.config import TrainConfig
        from stages.train.loop import train

        # an interrupted earlier attempt of this stage leaves a partial log behind: start clean
        shutil.rmtree(output, ignore_errors=True)
        config = TrainConfig(cache=str(self.cache_dir(cache)), student=str(student), output=str(output), mode=mode,
                             comp_demo=comp_demo, lr=lr, max_steps=steps, batch_size=self.cfg.batch_size,
                             seed=seed, log_every=log_every, mixed_precision="no", warmup_ratio=0.05,
                             data_workers=0 if stream_class else 1)  # an online teacher runs on the training thread
        result = train(config, stream_class=stream_class) if stream_class else train(config)
        return {"steps": result.steps, "last": result.last_metrics}

    def init(self) -> dict[str, Any]:
        tok = self._tokenizer(self.tok_small)
        fresh = rmodels.build_model("student", self.out / "students" / "fresh", tok, self.cfg.student, seed=0)
        return self.train_student(self.out / "students" / "init", cache="shared", mode="ce", comp_demo=False,
                                  steps=self.cfg.init_steps, lr=self.cfg.init_lr, seed=0, student=fresh)

    def evaluate_student(self, path: Path) -> dict[str, Any]:
        from tide.models.student import load_student

        cfg = self.cfg
        tok = self._tokenizer(self.tok_small)
        model = load_student(path, dtype=torch.float32)
        model.eval()
        forward = rtrain.student_forward(model, cfg.block_size)
        out: dict[str, Any] = {"nll": {}, "infill": {}}
        for set_name, encoded in self._eval_sets(tok, cfg.student_max_length).items():
            out["nll"][set_name] = {str(t): rscore.masked_nll(model, forward, encoded, t=t, mask_token_id=tok.mask_token_id,
                                                              pad_id=tok.pad_token_id) for t in cfg.nll_timesteps}
            spans = rscore.infill_spans(encoded, block_size=cfg.block_size)
            exact, token_acc, n = rscore.infill_accuracy(model, forward, encoded, spans,
                                                         mask_token_id=tok.mask_token_id, pad_id=tok.pad_token_id,
                                                         block_size=cfg.block_size)
            out["infill"][set_name] = {"exact": exact, "token": token_acc, "spans": n}
        return out

    def mode_run(self, label: str, cache: str, mode: str, comp_demo: bool, seed: int) -> dict[str, Any]:
        output = self.out / "students" / f"{mode}{'-cd' if comp_demo else ''}-s{seed}"
        start = time.perf_counter()
        trained = self.train_student(output, cache=cache, mode=mode, comp_demo=comp_demo, steps=self.cfg.mode_steps,
                                     lr=self.cfg.mode_lr, seed=seed, student=self.out / "students" / "init")
        train_s = time.perf_counter() - start
        metrics = self.evaluate_student(output)
        curve = [json.loads(line) for line in (output / "logs" / "metrics.jsonl").read_text().splitlines() if line]
        return {"label": label, "mode": mode, "comp_demo": comp_demo, "seed": seed, "train_s": train_s,
                **trained, "metrics": metrics, "curve": [{"step": r["step"], "loss": r["loss"],
                                                           "loss_ce": r.get("loss_ce")} for r in curve]}

    def compare(self, name: str, cache: str, pipeline: str, mode: str, *, online_from: str | None = None,
                ) -> dict[str, Any]:
        """Cached vs online for ``compare_steps`` steps from the init student, per-step losses logged.

        ``online_from``: the comparison whose online run to reuse (same rows, order and noise: the exact-tier
        cache is built from the same samples as the k = V cache)."""
        from benchmarks.replication.online import TeacherTargets, online_stream_class
        from cache_schema.reader import CacheReader
        from tide.models.student import load_student
        from tide.models.teacher import TeacherRunner, load_teacher

        cfg = self.cfg
        base = self.out / "compare" / name
        cached_dir = base / "cached"
        online_dir = (self.out / "compare" / online_from if online_from else base) / "online"
        kwargs = dict(cache=cache, mode=mode, comp_demo=False, steps=cfg.compare_steps, lr=cfg.mode_lr, seed=0,
                      student=self.out / "students" / "init", log_every=1)
        start = time.perf_counter()
        self.train_student(cached_dir, **kwargs)
        cached_s = time.perf_counter() - start
        manifest = CacheReader(str(self.cache_dir(cache))).manifest
        online_s, forwards = None, None
        if online_from is None:
            teacher = load_teacher(self.teacher_dir(pipeline) / "final", dtype=torch.float32)
            runner = TeacherRunner(teacher, regime=manifest.teacher.regime, block_size=manifest.student.block_size)
            provider = TeacherTargets(runner, pipeline=pipeline, shared_vocab_size=manifest.teacher.shared_vocab_size,
                                      temperatures=tuple(manifest.targets.temperatures))
            start = time.perf_counter()
            self.train_student(online_dir, stream_class=online_stream_class(provider), **kwargs)
            online_s, forwards = time.perf_counter() - start, provider.forwards

        def curve(path: Path) -> list[float]:
            rows = [json.loads(line) for line in (path / "logs" / "metrics.jsonl").read_text().splitlines() if line]
            return [float(r["loss"]) for r in rows]

        a, b = curve(cached_dir), curve(online_dir)
        pa = load_student(cached_dir, dtype=torch.float32).state_dict()
        pb = load_student(online_dir, dtype=torch.float32).state_dict()
        init = load_student(self.out / "students" / "init", dtype=torch.float32).state_dict()
        max_param = max(float((pa[k] - pb[k]).abs().max()) for k in pa)
        moved = max(float((pa[k] - init[k]).abs().max()) for k in pa)
        diff_norm = sum(float((pa[k] - pb[k]).double().pow(2).sum()) for k in pa) ** 0.5
        update_norm = sum(float((pa[k] - init[k]).double().pow(2).sum()) for k in pa) ** 0.5
        k, values, exact = describe_targets(manifest)
        return {"pipeline": pipeline, "mode": mode, "cache": cache, "k": k, "exact": exact,
                "value_dtype": values, "steps": len(a), "param_diff_over_update_norm": diff_norm / max(update_norm, 1e-30),
                "cached_loss": a, "online_loss": b,
                "max_loss_diff": max(abs(x - y) for x, y in zip(a, b, strict=True)),
                "max_rel_loss_diff": max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b, strict=True)),
                "max_param_diff": max_param, "max_param_update": moved,
                "cached_s": cached_s, "online_s": online_s, "online_teacher_forwards": forwards, "online_from": online_from}


def describe_targets(manifest) -> tuple[str | None, str, bool]:
    """(k policy in words or None for chunk targets, value encoding, whether the targets are exact); the exact
    tier (teacher hidden states + LM head) is described as such, not as exact targets."""
    if manifest.targets.exact is not None:
        return "exact tier", f"{manifest.targets.exact.hidden_encoding} hidden states + LM head", False
    sparse = manifest.targets.sparse
    if sparse is None:
        return None, "float32 chunk log-probs", True
    policy = sparse.k_policy
    exact = (policy.kind == "fixed" and policy.ceiling >= manifest.teacher.shared_vocab_size
             and sparse.encoding.name == "float32")
    if policy.kind == "fixed":
        return f"{policy.ceiling} (fixed)", sparse.encoding.name, exact
    words = f"mass {policy.mass:g} at T = {policy.temperature:g}, {policy.floor}–{policy.ceiling} per position"
    return words, sparse.encoding.name, exact


def run_all(output: Path, config: ReplicationConfig, docs: Path | None) -> dict[str, Any]:
    torch.set_num_threads(config.threads)
    r = Runner(output, config)
    results: dict[str, Any] = {"config": config.as_dict()}
    results["data"] = r.stage("data", r.data)
    results["tokenizers"] = r.stage("tokenizers", r.tokenizers)
    results["select"] = r.stage("select", r.select)
    results["teacher_shared"] = r.stage("teacher_shared", lambda: r.teacher("shared"))
    results["teacher_cross"] = r.stage("teacher_cross", lambda: r.teacher("cross"))
    results["cache_shared"] = r.stage("cache_shared", lambda: r.cache("shared", "shared"))
    results["cache_cross"] = r.stage("cache_cross", lambda: r.cache("cross", "cross"))
    results["cache_shared_full"] = r.stage("cache_shared_full", lambda: r.cache(
        "shared_full", "shared", k=rtok.shared_vocab_size(r._tokenizer(r.tok_small)), k_policy="fixed",
        encoding="float32", passes=["plain"], replicas=1, max_samples=config.compare_samples))
    results["cache_shared_exact"] = r.stage("cache_shared_exact", lambda: r.cache(
        "shared_exact", "shared", targets="exact", passes=["plain"], replicas=1, max_samples=config.compare_samples))
    results["init"] = r.stage("init", r.init)
    results["init_metrics"] = r.stage("init_metrics", lambda: r.evaluate_student(output / "students" / "init"))
    runs = []
    for seed in config.seeds:
        for label, cache, mode, comp_demo in MODES:
            name = f"mode_{mode}{'_cd' if comp_demo else ''}_s{seed}"
            runs.append(r.stage(name, lambda a=(label, cache, mode, comp_demo, seed): r.mode_run(*a)))
    results["runs"] = runs
    results["compare"] = [
        r.stage("compare_shared_kV", lambda: r.compare("shared_kV", "shared_full", "shared", "kl")),
        r.stage("compare_shared_k", lambda: r.compare("shared_k", "shared", "shared", "kl")),
        r.stage("compare_shared_kV_tidal", lambda: r.compare("shared_kV_tidal", "shared_full", "shared", "tidal")),
        r.stage("compare_shared_k_tidal", lambda: r.compare("shared_k_tidal", "shared", "shared", "tidal")),
        r.stage("compare_shared_exact", lambda: r.compare("shared_exact", "shared_exact", "shared", "kl",
                                                          online_from="shared_kV")),
        r.stage("compare_cross", lambda: r.compare("cross", "cross", "cross", "reverse_calm")),
    ]
    (output / "results.json").write_text(json.dumps(results, indent=2, default=float))
    if docs is not None:
        from benchmarks.replication.report import write_report

        write_report(results, docs)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replication.run", description=__doc__)
    parser.add_argument("--output", required=True, help="output directory (stages already done there are skipped)")
    parser.add_argument("--quick", action="store_true", help="minutes-long smoke version")
    parser.add_argument("--docs", default=None, help="write fidelity.md and its plot into this directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "transformers", "accelerate", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    run_all(Path(args.output), QUICK if args.quick else FULL, Path(args.docs) if args.docs else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
