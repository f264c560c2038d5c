"""``docs/benchmarks.md`` from the suite's JSON results: one section per benchmark, the headline table and the
k-sweep figure. A failed or skipped benchmark keeps its previous JSON, marked as such in the status table."""

from __future__ import annotations

import ast
import json
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.suite import BENCH_DIR, BENCHMARKS, FIDELITY_FIGURE, FIGURE, RESULTS, Benchmark, logger

# ------------------------------------------------------------------------------------------------ rendering


def dig(data: Any, path: str) -> Any:
    """``data["a"]["b"]`` for ``path="a.b"``; None when any step is missing."""
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, scalar or short list) pairs of a nested JSON object, in order."""
    if isinstance(data, dict):
        out: list[tuple[str, Any]] = []
        for key, value in data.items():
            out += flatten(value, f"{prefix}{key}.")
        return out
    if isinstance(data, list) and any(isinstance(v, (dict, list)) for v in data):
        out = []
        for index, value in enumerate(data):
            out += flatten(value, f"{prefix}{index}.")
        return out
    return [(prefix.rstrip("."), data)]


def fmt(value: Any) -> str:
    """A table cell: 4 significant digits for floats, thousands separators for large ints, '-' for None."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.3e}"
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return lines


def key_values(data: dict, keys: Sequence[tuple[str, str]]) -> list[str]:
    """A two-column table of the ``(label, dotted path)`` entries present in ``data``."""
    rows = [(label, dig(data, path)) for label, path in keys if dig(data, path) is not None]
    return table(("quantity", "value"), rows) if rows else []


def all_figures(data: dict) -> list[str]:
    """Every value of a result, collapsed (GitHub renders ``<details>``)."""
    rows = flatten(data)
    return ["<details><summary>all figures</summary>", "", *table(("key", "value"), rows), "", "</details>"]


def script_summary(script: str) -> str:
    """The first paragraph of a benchmark script's docstring, on one line."""
    path = BENCH_DIR / script
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    except (OSError, SyntaxError):
        return ""
    return " ".join(doc.split("\n\n")[0].split())


def load_results(bench: Benchmark) -> dict[str, dict]:
    """The benchmark's JSON files that exist, by file name."""
    out = {}
    for name in bench.results:
        path = RESULTS / name
        if path.is_file():
            try:
                out[name] = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                logger.warning("%s is not valid JSON (%s); left out of the report", path, exc)
    return out


def render_build(results: dict[str, dict]) -> list[str]:
    data = results.get("build.json")
    if data is None:
        return []
    lines = ["Setup:", ""]
    lines += key_values(data, [
        ("teacher hidden size", "teacher.hidden"), ("teacher layers", "teacher.layers"),
        ("teacher vocabulary rows", "teacher.vocab_rows"), ("student max length", "max_length"),
        ("samples", "samples"), ("cache rows", "rows"), ("teacher forwards", "teacher_forwards"),
        ("torch threads", "torch_threads"),
    ])
    lines += ["", "Results:", ""]
    lines += key_values(data, [
        ("**build time / bare teacher time**", "build_over_bare_teacher"),
        ("target ratio", "target_build_over_bare_teacher"),
        ("build wall time (s)", "build_wall_seconds"), ("bare teacher time (s)", "bare_teacher_seconds"),
        ("teacher time inside the build (s)", "teacher_seconds_inside_build"),
        ("samples per second", "samples_per_second"),
        ("bytes per masked position", "bytes_per_masked_position"), ("bytes per target", "bytes_per_target"),
        ("mean tail mass", "mean_tail_mass"), ("padding efficiency", "padding_efficiency"),
    ])
    return lines + ["", *all_figures(data)]


def render_train_step(results: dict[str, dict]) -> list[str]:
    lines: list[str] = []
    for name, data in results.items():
        config = data.get("config", {})
        lines += [f"`{name}` — student hidden {fmt(config.get('hidden'))}, {fmt(config.get('layers'))} layers; "
                  f"teacher hidden {fmt(config.get('teacher_hidden'))}, {fmt(config.get('teacher_layers'))} layers; "
                  f"vocabulary {fmt(config.get('shared_vocab'))}, k = {fmt(config.get('k'))}; batch "
                  f"{fmt(config.get('batch'))} × sequence length {fmt(config.get('seq_len'))}; mode "
                  f"{fmt(config.get('mode'))}; device {fmt(config.get('device'))}", ""]
        variants = data.get("variants", {})
        if variants:
            lines += table(
                ("variant", "median step (s)", "min step (s)", "peak memory (MB)", "memory measured as"),
                [(name_, v.get("median_step_s"), v.get("min_step_s"), v.get("peak_memory_mb"), v.get("memory_kind"))
                 for name_, v in variants.items()],
            )
            lines.append("")
        lines += key_values(data, [("**cache step / ce step** (tidal + CompDemo)", "cache_over_ce"),
                                   ("**cache step / ce step** (kl)", "cache_kl_over_ce"),
                                   ("**cache step / online step**", "cache_over_online"),
                                   ("target cache / ce", "target_cache_over_ce")])
        profiled = {name_: v["profile"] for name_, v in variants.items() if v.get("profile")}
        if profiled:
            lines += ["", "Where one step's time goes (torch.profiler, self CPU time, share of the step):", ""]
            ops = list(dict.fromkeys(entry["op"] for entries in profiled.values() for entry in entries))
            shares = {name_: {e["op"]: e["self_cpu_share"] for e in entries} for name_, entries in profiled.items()}
            lines += table(("operator", *profiled),
                           [(op, *(f"{100 * shares[v][op]:.1f}%" if op in shares[v] else "" for v in profiled))
                            for op in ops])
        lines += ["", *all_figures(data), ""]
    return lines


def render_data_path(results: dict[str, dict]) -> list[str]:
    data = results.get("data_path.json")
    if data is None:
        return []
    config = data.get("config", {})
    lines = [f"Student hidden 1024, {fmt(config.get('layers'))} layers, batch {fmt(config.get('batch_size'))} × 512, "
             f"mode kl at T = 2; synthetic format-v2 cache with the default k policy, content checks on.", ""]
    lines += key_values(data, [("one core: batches per second", "supply_one_core.batches_per_s"),
                               ("one core: masked positions per second", "supply_one_core.masked_positions_per_s"),
                               ("target wait share", "target_wait_share")])
    lines.append("")
    lines += table(("data workers", "median wait (s)", "median step compute (s)", "wait share of the step"),
                   [(r.get("workers"), r.get("median_wait_s"), r.get("median_compute_s"),
                     f"{100 * r.get('wait_share', 0.0):.2f}%") for r in data.get("runs", [])])
    return lines + ["", *all_figures(data)]


def render_reader(results: dict[str, dict]) -> list[str]:
    data = results.get("reader.json")
    if data is None:
        return []
    lines = ["Setup:", ""]
    lines += key_values(data, [
        ("vocabulary", "config.vocab"), ("teacher", "config.teacher"), ("temperatures", "config.temperatures"),
        ("student sequence length", "config.student_length"), ("rows", "config.rows"),
        ("passes", "config.passes"), ("rows per row group", "config.row_group_rows"),
        ("compression", "config.compression"), ("torch threads", "config.torch_threads"),
        ("default k policy", "default.policy"),
    ])
    lines += ["", "The default encoding (rank24-delta8, the k policy above) on the whole cache:", ""]
    lines += key_values(data, [
        ("**bytes per masked position (both passes)**", "default.bytes_per_masked_position"),
        ("bytes per target item (all columns)", "default.bytes_per_target_item"),
        ("**training path: masked positions / s (one thread)**", "default.training.masked_positions_per_second"),
        ("value rounding, max (nats)", "default.rounding.value_nats_max"),
        ("log-tail rounding, max (nats)", "default.rounding.log_tail_nats_max"),
        ("tail mass, max relative error", "default.rounding.tail_mass_relative_max"),
        ("gold log-prob rounding, max (nats)", "default.rounding.gold_logprob_nats_max"),
    ])
    alternatives = data.get("alternatives") or []
    if alternatives:
        lines += ["", "One pass's targets per layout: compressed bytes per target item and the decode speed of a "
                  "row group's pass columns to training's padded tensors (one thread):", ""]
        lines += table(("layout", "mean k", "bytes / target / pass", "decode (targets / s)"),
                       [(a["name"], a.get("mean_k", "-"), a["bytes_per_target_per_pass"],
                         a["decode_targets_per_second"]) for a in alternatives])
    return lines + ["", *all_figures(data)]


def render_remote(results: dict[str, dict]) -> list[str]:
    data = results.get("remote.json")
    if data is None:
        return []
    lines = ["Setup: a synthetic `cross` cache (random ids and chunk log-probs: zstd cannot shrink it), a tiny "
             "student, one optimizer step; the reader test pushes a smaller cache to a moto S3 server on "
             "127.0.0.1 (its own process) and reads it whole with the training columns.", ""]
    lines += key_values(data, [
        ("start-up cache (bytes)", "startup.cache_bytes"), ("start-up cache shards", "startup.shards"),
        ("**start to first step, every shard hashed first (s)**", "startup.verify_at_start_seconds"),
        ("**start to first step, lazy checksums (s)**", "startup.lazy_seconds"),
        ("**ratio (hashed first / lazy)**", "startup.verify_at_start_over_lazy"),
        ("opening the reader, hashing every shard (s)", "startup.reader_open_verify_seconds"),
        ("opening the reader, sizes and footers only (s)", "startup.reader_open_lazy_seconds"),
        ("throughput cache (bytes)", "throughput.cache_bytes"),
        ("**reader, local disk (MB/s)**", "throughput.local_read_ahead_4.mb_per_second"),
        ("**reader, loopback S3, read-ahead 4 (MB/s)**", "throughput.s3_read_ahead_4.mb_per_second"),
        ("reader, loopback S3, no read-ahead (MB/s)", "throughput.s3_read_ahead_0.mb_per_second"),
        ("S3 / local throughput", "throughput.s3_over_local"),
        ("push to S3 (s)", "throughput.push_seconds"), ("open from S3 (s)", "throughput.s3_reader_open_seconds"),
    ])
    return lines + ["", *all_figures(data)]


def render_teacher_runner(results: dict[str, dict]) -> list[str]:
    data = results.get("teacher_runner.json")
    if data is None:
        return []
    lines = ["Setup:", ""]
    lines += key_values(data, [
        ("model", "model.type"), ("vocabulary", "model.vocab_size"), ("hidden size", "model.hidden_size"),
        ("layers", "model.layers"), ("batch", "batch"), ("sequence length", "length"),
        ("LM-head chunk (rows)", "head_chunk_size"), ("selected positions", "selected_positions"),
        ("method", "method"),
    ])
    lines += ["", "Results:", ""]
    lines += key_values(data, [
        ("**runner peak memory increase (MiB)**", "runner_peak_rss_delta_mib"),
        ("**full-logits peak memory increase (MiB)**", "full_peak_rss_delta_mib"),
        ("expected full fp32 logits (MiB)", "full_logits_fp32_mib_expected"),
        ("expected runner chunk logits (MiB)", "runner_chunk_logits_fp32_mib_expected"),
        ("runner time (s)", "runner_seconds"), ("full time (s)", "full_seconds"),
        ("max abs log-prob difference", "max_abs_logprob_diff"),
    ])
    return lines + ["", *all_figures(data)]


def render_moe(results: dict[str, dict]) -> list[str]:
    data = results.get("moe.json")
    if data is None:
        return []
    lines = ["Setup:", ""]
    lines += key_values(data, [
        ("hidden size", "config.hidden"), ("routed experts", "config.experts"),
        ("expert width", "config.moe_intermediate"), ("top-k", "config.top_k"),
        ("shared experts", "config.shared_experts"), ("tokens", "config.tokens"), ("dtype", "config.dtype"),
        ("device", "config.device"), ("torch threads", "config.torch_threads"), ("timed runs each", "config.repeats"),
        ("experts without tokens", "routing.empty_experts"),
        ("largest expert load (tokens)", "routing.max_tokens_per_expert"),
    ])
    lines += ["", "Results:", ""]
    lines += key_values(data, [
        ("**grouped / loop time (medians)**", "grouped_over_loop"),
        ("grouped median (s)", "seconds.grouped_mm.median"), ("loop median (s)", "seconds.eager.median"),
        ("outputs max abs difference", "outputs.max_abs_diff"),
        ("outputs allclose (rtol 1e-5, atol 1e-5)", "outputs.allclose_rtol1e-5_atol1e-5"),
        ("grouped peak RSS increase (MiB)", "memory.peak_rss_delta_mib.grouped_mm"),
        ("loop peak RSS increase (MiB)", "memory.peak_rss_delta_mib.eager"),
        ("expert weights (MiB)", "memory.expert_weights_mib"),
        ("grouped form's pair tensors (MiB)", "memory.formulation_tensors_mib.grouped_pairs_tensors"),
        ("padded bmm at the largest load (MiB)", "memory.formulation_tensors_mib.padded_bmm_tensors"),
        ("batched_mm gathered weights (MiB)", "memory.formulation_tensors_mib.batched_mm_gathered_weights"),
    ])
    return lines + ["", *all_figures(data)]


def render_alignment(results: dict[str, dict]) -> list[str]:
    data = results.get("alignment.json")
    if data is None:
        return []
    setup = [("student sequence length", "config.student_length"), ("teacher lengths", "config.teacher_lengths"),
             ("student tokenizer", "config.student_tokenizer"), ("timed runs each (median)", "config.repeats")]
    lines = ["Setup:", "", *key_values(data, setup), "", "Results (seconds per sample):", ""]
    pipelines = data.get("pipelines", {})
    sizes = sorted({row["content_kib"] for p in pipelines.values() for row in p.get("sizes", [])})
    rows = []
    for name, entry in pipelines.items():
        for label, key, ratio in (("", "seconds_per_sample", "max_over_min"),
                                  (" without the sample key", "seconds_without_sample_key",
                                   "without_sample_key_max_over_min"),
                                  (" sample key alone", "sample_key_seconds", None)):
            by_size = {row["content_kib"]: row.get(key) for row in entry.get("sizes", [])}
            rows.append((name + label, *(by_size.get(size) for size in sizes), entry.get(ratio) if ratio else None))
    lines += table(("pipeline", *(f"{size} KiB" for size in sizes), "**max / min**"), rows)
    uncut = [(name, row["content_kib"], row["seconds_per_sample"], row["same_sample_as_cut"])
             for name, entry in pipelines.items() for row in entry.get("uncut", [])]
    if uncut:
        lines += ["", "Without the content cut (the whole content tokenised and aligned):", ""]
        lines += table(("pipeline", "content (KiB)", "seconds per sample", "same sample as with the cut"), uncut)
    return lines + ["", *all_figures(data)]


def render_fidelity(results: dict[str, dict]) -> list[str]:
    data = results.get("fidelity_k.json")
    if data is None:
        return []
    config = data.get("config", {})
    lines = [
        f"Vocabulary {fmt(config.get('vocab'))} (shared slice), k ∈ {fmt(config.get('ks'))}, stored temperatures "
        f"{fmt(config.get('temperatures'))} (KL and losses at each), "
        f"{fmt(config.get('positions_per_family'))} target positions per family "
        f"({fmt(config.get('target_positions_per_row'))} per cache row), compression {fmt(config.get('compression'))}.",
        f"Bytes: {config.get('bytes_method', '-')}. Student logits: {config.get('student', '-')}. "
        "Loss error = |top-k loss − full-logit loss| / full-logit loss.",
        "",
    ]
    if FIGURE.is_file():
        lines += [f"![k sweep]({FIGURE.name})", ""]
    for name, family in data.get("families", {}).items():
        lines += [f"**{name}** — {family.get('description', '')}; {fmt(family.get('positions'))} positions. "
                  f"Check k = V against the direct formulas (abs diff): "
                  f"{', '.join(f'{k} {fmt(v)}' for k, v in family.get('check_k_equals_vocab_abs_diff', {}).items())}.",
                  ""]
        sweep = family.get("sweep", [])
        lines += ["Storage:", ""]
        lines += table(("k", "values", "target bytes / position", "raw bytes / position", "shard bytes / position"),
                       [(e.get("k"), e.get("value_dtype"), e.get("bytes_per_target_position"),
                         e.get("raw_bytes_per_target_position"), e.get("shard_bytes_per_target_position"))
                        for e in sweep])
        lines += ["", "Fidelity (fp16 values; fp32 values give the same figures to 3 digits, see the JSON):", ""]
        rows = []
        for e in (x for x in sweep if x.get("value_dtype") == "float16"):
            for temp in ("T=1", "T=2"):
                rows.append((
                    e.get("k"), temp, dig(e, f"mean_tail_mass.{temp}"),
                    dig(e, f"kl_full_to_reconstruction.{temp}.mean"), dig(e, f"kl_full_to_reconstruction.{temp}.max"),
                    dig(e, f"loss.{temp}.kl.rel_error"), dig(e, f"loss.{temp}.reverse_kl.rel_error"),
                    dig(e, f"loss.{temp}.tidal.rel_error"),
                ))
        lines += table(("k", "T", "tail mass", "KL(full‖rec) mean", "KL(full‖rec) max", "kl loss error",
                        "reverse_kl loss error", "tidal loss error"), rows)
        lines.append("")
    env = data.get("environment", {})
    if env:
        lines.append("Ran with: " + ", ".join(f"{k} {fmt(v)}" for k, v in env.items()) + ".")
    return lines


def save_figure(plt, fig, path: Path, title: str, *, dpi: int) -> Path:
    """Title, lay out, write and close a report figure (``plt``: the lazily imported pyplot)."""
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_fidelity(data: dict, path: Path) -> Path | None:
    """The k-sweep figure: bytes per position, KL(full ‖ reconstruction) and loss error against k."""
    families = data.get("families", {})
    if not families:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.4))
    markers = {"kl": "o", "reverse_kl": "s", "tidal": "^"}
    for index, (name, family) in enumerate(families.items()):
        color = f"C{index}"
        entries = [e for e in family.get("sweep", []) if e.get("value_dtype") == "float16"] or family.get("sweep", [])
        ks = [e["k"] for e in entries]
        axes[0].plot(ks, [e["bytes_per_target_position"] for e in entries], "o-", color=color, label=name)
        for style, temp in (("-", "T=1"), ("--", "T=2")):
            values = [dig(e, f"kl_full_to_reconstruction.{temp}.mean") for e in entries]
            axes[1].plot(ks, [v if v is not None else float("nan") for v in values], style, marker="o", color=color,
                         label=f"{name} {temp}")
        for panel, temp in ((2, "T=1"), (3, "T=2")):
            for loss, marker in markers.items():
                values = [dig(e, f"loss.{temp}.{loss}.rel_error") for e in entries]
                axes[panel].plot(ks, [v if v is not None else float("nan") for v in values], "-", marker=marker,
                                 color=color, label=f"{name} {loss}")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("bytes per target position (fp16 values, zstd)")
    axes[1].set_ylabel("KL(full ‖ top-k reconstruction)")
    axes[1].set_yscale("log")
    for panel, temp in ((2, "1"), (3, "2")):
        axes[panel].set_ylabel(f"relative loss error vs full logits, T = {temp}")
        axes[panel].set_yscale("log")
    for ax in axes:
        ax.legend(fontsize=7)
    return save_figure(plt, fig, path, "Pipeline B top-k targets over the 151,646-id shared vocabulary", dpi=110)


FIDELITY_LOSSES = ("kl", "reverse_kl", "tidal")
FIDELITY_TEMPERATURES = ("T=1", "T=2")


def _gradient_cell(entry: dict | None) -> str:
    """'rel-L2 · cosine · loss error' of one loss."""
    if not entry:
        return "-"
    return " · ".join(fmt(entry.get(key)) for key in ("grad_rel_l2", "grad_cosine", "loss_rel_error"))


def _bold(text: Any, marked: bool) -> Any:
    return f"**{text}**" if marked else text


def _is_cell(cell: dict, tail: str, spec: dict | None) -> bool:
    return bool(spec) and (cell.get("policy"), cell.get("encoding"), tail) == (
        spec.get("policy"), spec.get("encoding"), spec.get("tail"))


def render_fidelity_v2(results: dict[str, dict]) -> list[str]:
    data = results.get("fidelity.json")
    if data is None:
        return []
    config = data.get("config", {})
    verdict = data.get("acceptance", {})
    default, comparison = verdict.get("default"), verdict.get("comparison")
    lines = [
        f"Stored temperatures {fmt(config.get('temperatures'))}; {fmt(config.get('scored_positions_per_family'))} "
        f"scored positions per family, {fmt(config.get('storage_positions_per_family'))} in the storage measurement "
        f"({fmt(config.get('target_positions_per_row'))} per cache row), compression {config.get('compression', '-')}; "
        f"id table of {fmt(config.get('id_table_size'))} ids; mixture uniform share {fmt(config.get('uniform_share'))}; "
        f"TIDAL at progress {fmt(dig(config, 'tidal.progress'))}. Bytes = compressed bytes of the pass's columns "
        "per target position (one pass; every position is a masked target position). Every cell of the tables "
        "is `gradient rel-L2 · gradient cosine · loss error` against full-logit distillation.",
        "",
    ]
    if FIDELITY_FIGURE.is_file():
        lines += [f"![bytes vs gradient error]({FIDELITY_FIGURE.name})", ""]
    lines += _render_acceptance(verdict)
    for name, family in data.get("families", {}).items():
        lines += [f"### {name}", "", f"{family.get('description', '')}; vocabulary {fmt(family.get('vocab'))}.", ""]
        stats = family.get("stats", {})
        lines += table(("distribution", "T", "entropy", "top-1 probability", "mass outside the top 64"),
                       [(who, temp, v.get("entropy"), v.get("top1"), v.get("mass_outside_top64"))
                        for who, by_temp in stats.items() for temp, v in by_temp.items()])
        lines.append("")
        cells = family.get("cells", [])
        students = list(cells[0].get("results", {})) if cells else []
        for student in students:
            lines += [f"Student `{student}` (**bold**: the acceptance pair):", ""]
            rows = []
            for cell in cells:
                tails = next(iter(cell["results"][student].values()))
                for tail in tails:
                    marked = _is_cell(cell, tail, default) or _is_cell(cell, tail, comparison)
                    rows.append((*(_bold(text, marked) for text in (cell.get("policy"), cell.get("encoding"), tail)),
                                 cell.get("bytes_per_position"), cell.get("mean_k"),
                                 dig(cell, f"results.{student}.T=2.{tail}.kl_full_to_reconstruction"),
                                 *(_gradient_cell(dig(cell, f"results.{student}.{temp}.{tail}.{loss}"))
                                   for temp in FIDELITY_TEMPERATURES for loss in FIDELITY_LOSSES)))
            lines += table(("policy", "encoding", "tail", "bytes / position / pass", "mean k", "KL(full‖rec) T=2",
                            *(f"{loss} {temp}" for temp in FIDELITY_TEMPERATURES for loss in FIDELITY_LOSSES)),
                           rows)
            lines.append("")
    return lines


def _render_acceptance(verdict: dict) -> list[str]:
    """Issue 12's acceptance: the default cell against the uniform tail at fixed k = 64, per family."""
    if not verdict:
        return []
    default, comparison = verdict.get("default", {}), verdict.get("comparison", {})
    gains = verdict.get("required_gain", {})
    lines = [
        f"**Acceptance** (issue 12; verdict on `{verdict.get('family')}` at {verdict.get('temperature')}): the "
        f"default — {default.get('policy')}, {default.get('encoding')}, tail {default.get('tail')} — needs at most "
        f"{fmt(verdict.get('bytes_limit'))} bytes per position per pass and a gradient rel-L2 at least "
        + ", ".join(f"{fmt(g)}× smaller for {loss}" for loss, g in gains.items())
        + f" than {comparison.get('policy')}, {comparison.get('encoding')}, tail {comparison.get('tail')}. "
        f"**Verdict: {'pass' if verdict.get('passes') else 'fail'}.**",
        "",
    ]
    rows = []
    for name, family in verdict.get("families", {}).items():
        for student, by_temp in family.get("students", {}).items():
            for temp, entry in by_temp.items():
                losses = entry.get("losses", {})
                rows.append((name, student, temp, family.get("bytes_per_position"),
                             family.get("comparison_bytes_per_position"),
                             *(f"{fmt(v.get('default_grad_rel_l2'))} / {fmt(v.get('comparison_grad_rel_l2'))} "
                               f"({fmt(v.get('gain'))}×)" for v in losses.values()),
                             "pass" if entry.get("passes") else "fail"))
    loss_names = next((list(e.get("losses", {})) for f in verdict.get("families", {}).values()
                       for s in f.get("students", {}).values() for e in s.values()), [])
    lines += table(("family", "student", "T", "bytes / position / pass (default)", "bytes (comparison)",
                    *(f"{loss} rel-L2 default / comparison (gain)" for loss in loss_names), "gradient criteria"),
                   rows)
    return lines + [""]


def plot_fidelity_v2(data: dict, path: Path) -> Path | None:
    """Bytes per position against gradient rel-L2 at T = 2: a row per (family, student), a column per loss."""
    families = data.get("families", {})
    panels = [(name, student, family) for name, family in families.items()
              for student in (family.get("cells") or [{}])[0].get("results", {})]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    verdict = data.get("acceptance", {})
    fig, axes = plt.subplots(len(panels), len(FIDELITY_LOSSES), figsize=(5.2 * len(FIDELITY_LOSSES), 3.6 * len(panels)),
                             squeeze=False)
    for row, (name, student, family) in enumerate(panels):
        for column, loss in enumerate(FIDELITY_LOSSES):
            ax = axes[row][column]
            for index, tail in enumerate(("student", "uniform", "mixture")):
                for kind, marker in (("fixed", "s"), ("mass", "o")):
                    cells = [c for c in family["cells"] if c["policy"].startswith(kind)]
                    points = [(c["bytes_per_position"], dig(c, f"results.{student}.T=2.{tail}.{loss}.grad_rel_l2"))
                              for c in cells]
                    points = [p for p in points if p[1] is not None]
                    ax.scatter([p[0] for p in points], [p[1] for p in points], marker=marker, color=f"C{index}",
                               alpha=0.75, label=f"{tail}, {kind} k")
            for spec, marker, label in ((verdict.get("default"), "*", "default"),
                                        (verdict.get("comparison"), "X", "uniform, fixed 64")):
                cell = next((c for c in family["cells"] if spec and (c["policy"], c["encoding"]) ==
                             (spec["policy"], spec["encoding"])), None)
                value = dig(cell, f"results.{student}.T=2.{spec['tail']}.{loss}.grad_rel_l2") if cell else None
                if value is not None:
                    ax.scatter([cell["bytes_per_position"]], [value], marker=marker, s=180, color="black",
                               facecolors="none" if marker == "*" else "black", label=label, zorder=3)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
            ax.set_title(f"{name} / {student}: {loss}, T = 2", fontsize=9)
            ax.set_xlabel("bytes per position per pass")
            ax.set_ylabel("gradient rel-L2 vs full logits")
    axes[0][0].legend(fontsize=7)
    return save_figure(plt, fig, path, "Sparse-target cache: bytes against gradient error (T = 2)", dpi=90)


def render_exact(results: dict[str, dict]) -> list[str]:
    data = results.get("exact.json")
    if data is None:
        return []
    lines = ["Setup:", ""]
    lines += key_values(data, [
        ("shared vocabulary", "config.shared_vocab"), ("teacher hidden size", "config.teacher_hidden"),
        ("student hidden size", "config.student_hidden"), ("student layers", "config.student_layers"),
        ("teacher positions", "config.positions"), ("timed batch (rows × length)", "config.rows"),
        ("sequence length", "config.seq_len"), ("sparse default", "config.sparse_default"),
        ("step temperature", "config.step_temperature"), ("device", "config.device"),
    ])
    families = data.get("families", {})
    lines += ["", "Bytes per target position and pass (zstd Parquet):", ""]
    lines += table(
        ("family", "exact bf16", "exact int8", "sparse default", "full bf16 logits", "full / exact bf16",
         "exact bf16 / sparse"),
        [(name, dig(f, "bytes.exact_bfloat16_bytes_per_position"), dig(f, "bytes.exact_int8-rowscale_bytes_per_position"),
          dig(f, "bytes.sparse_default_bytes_per_position"), dig(f, "bytes.full_logits_bf16_bytes_per_position"),
          dig(f, "bytes.full_bf16_over_exact_bfloat16"), dig(f, "bytes.exact_bfloat16_over_sparse_default"))
         for name, f in families.items()],
    )
    lines += ["", "int8-rowscale: KL(full ‖ recon) per position (nats):", ""]
    lines += table(
        ("family", "T=1 mean", "T=1 p99", "T=1 max", "T=2 mean", "T=2 max", "hidden rel. L2 error"),
        [(name, dig(f, "int8_kl.T1.mean"), dig(f, "int8_kl.T1.p99"), dig(f, "int8_kl.T1.max"), dig(f, "int8_kl.T2.mean"),
          dig(f, "int8_kl.T2.max"), dig(f, "int8_kl.hidden_relative_l2_error_mean")) for name, f in families.items()],
    )
    steps = data.get("steps", {})
    lines += ["", "Training step (forward + objective + backward):", ""]
    lines += table(("variant", "median step (s)", "min step (s)", "target items"),
                   [(name, v.get("median_step_s"), v.get("min_step_s"), v.get("target_items")) for name, v in steps.items()])
    lines += [""]
    lines += key_values(data, [
        ("**exact bf16 / sparse default step (tidal)**", "exact_bfloat16_over_sparse_step_tidal"),
        ("exact int8 / sparse default step (tidal)", "exact_int8-rowscale_over_sparse_step_tidal"),
        ("exact bf16 / sparse default step (kl)", "exact_bfloat16_over_sparse_step_kl"),
        ("teacher recompute FLOPs / student head FLOPs", "teacher_recompute_flops_over_student_head"),
    ])
    return lines


def render_tail_summaries(results: dict[str, dict]) -> list[str]:
    data = results.get("tail_summaries.json")
    if data is None:
        return []
    config = data.get("config", {})
    lines = [f"{fmt(config.get('positions'))} scored positions per family; exact float64 values and masses (no "
             f"storage rounding); bucket edges geometric from rank {fmt(config.get('first_edge'))} of the id table "
             "to the vocabulary; B = 1 is the default student-shaped tail. Cells: gradient rel-L2 against full-logit "
             "distillation (gain over the uniform tail at k = 64).", ""]
    for name, family in data.get("families", {}).items():
        for student, cells in family.get("students", {}).items():
            lines += [f"**{name}**, student `{student}`:", ""]
            rows = [(c["temperature"], c["k"], "uniform" if c["buckets"] == 0 else c["buckets"],
                     *(f"{fmt(c['rel_l2'][loss])} ({fmt(c['gain_over_uniform_k64'][loss])}×)"
                       for loss in ("kl", "reverse_kl", "tidal"))) for c in cells]
            lines += table(("T", "k", "tail buckets", "kl", "reverse_kl", "tidal"), rows) + [""]
    return lines


RENDERERS: dict[str, Callable[[dict[str, dict]], list[str]]] = {
    "build": render_build,
    "train_step": render_train_step,
    "data_path": render_data_path,
    "fidelity_k": render_fidelity,
    "fidelity": render_fidelity_v2,
    "tail_summaries": render_tail_summaries,
    "reader": render_reader,
    "teacher_runner": render_teacher_runner,
    "moe": render_moe,
    "alignment": render_alignment,
    "remote": render_remote,
    "exact": render_exact,
}


def headline(results: dict[str, dict[str, dict]]) -> list[tuple[str, Any, str]]:
    """(figure, value, source) rows of the summary table."""
    rows: list[tuple[str, Any, str]] = []
    build = results.get("build", {}).get("build.json")
    if build:
        rows.append(("cache build time / bare teacher time", build.get("build_over_bare_teacher"), "bench_build"))
    for name, data in results.get("train_step", {}).items():
        rows.append((f"train step from cache / ce step ({name})", data.get("cache_over_ce"), "bench_train_step"))
        rows.append((f"train step from cache / online step ({name})", data.get("cache_over_online"), "bench_train_step"))
        if data.get("cache_kl_over_ce") is not None:
            rows.append((f"train step from cache, kl / ce step ({name})", data.get("cache_kl_over_ce"),
                         "bench_train_step"))
    for run in results.get("data_path", {}).get("data_path.json", {}).get("runs", []):
        rows.append((f"training thread's wait for a batch / step, {run.get('workers')} data worker(s)",
                     run.get("wait_share"), "bench_data_path"))
    reader = results.get("reader", {}).get("reader.json")
    if reader:
        rows.append(("bytes per masked position (default encoding and k policy, 2 passes)",
                     dig(reader, "default.bytes_per_masked_position"), "bench_reader"))
        default = next((a for a in reader.get("alternatives", []) if a["name"].endswith("(default)")), {})
        rows.append(("bytes per target item per pass (default)", default.get("bytes_per_target_per_pass"),
                     "bench_reader"))
        rows.append(("pass decode to training tensors, targets / s, one thread (default)",
                     default.get("decode_targets_per_second"), "bench_reader"))
        rows.append(("training path, masked positions / s, one thread",
                     dig(reader, "default.training.masked_positions_per_second"), "bench_reader"))
    remote = results.get("remote", {}).get("remote.json")
    if remote:
        rows.append(("tide-train start-up, shards hashed first / lazy checksums (≥ 2 GB cache)",
                     dig(remote, "startup.verify_at_start_over_lazy"), "bench_remote"))
        rows.append(("reader throughput, loopback S3 / local disk", dig(remote, "throughput.s3_over_local"),
                     "bench_remote"))
    fidelity = results.get("fidelity_k", {}).get("fidelity_k.json")
    for name, family in (fidelity or {}).get("families", {}).items():
        for e in family.get("sweep", []):
            if e.get("k") == 64 and e.get("value_dtype") == "float16":
                rows.append((f"k = 64 target bytes / position, one pass ({name})", e.get("bytes_per_target_position"),
                             "bench_fidelity_k"))
                rows.append((f"k = 64 KL(full ‖ reconstruction), T = 1 ({name})",
                             dig(e, "kl_full_to_reconstruction.T=1.mean"), "bench_fidelity_k"))
    rows += _fidelity_headline(results.get("fidelity", {}).get("fidelity.json"))
    runner = results.get("teacher_runner", {}).get("teacher_runner.json")
    if runner:
        rows.append(("TeacherRunner / full-logits peak memory", _ratio(runner.get("runner_peak_rss_delta_mib"),
                                                                       runner.get("full_peak_rss_delta_mib")),
                     "bench_teacher_runner"))
    moe = results.get("moe", {}).get("moe.json")
    if moe:
        rows.append(("LLaDA2 MoE block, grouped / per-expert loop time (real shape, CPU)", moe.get("grouped_over_loop"),
                     "bench_moe"))
    alignment = results.get("alignment", {}).get("alignment.json")
    for name, entry in (alignment or {}).get("pipelines", {}).items():
        rows.append((f"preparation time per sample, max / min over 64 KiB .. 8 MiB contents ({name})",
                     entry.get("max_over_min"), "bench_alignment"))
        rows.append((f"the same without the sample key's hash of the whole content ({name})",
                     entry.get("without_sample_key_max_over_min"), "bench_alignment"))
    return rows


def _fidelity_headline(data: dict | None) -> list[tuple[str, Any, str]]:
    """Issue 12's acceptance figures: the default's bytes and its gradient gains over the uniform k = 64 tail."""
    verdict = (data or {}).get("acceptance", {})
    family = verdict.get("families", {}).get(verdict.get("family"))
    if not family:
        return []
    temp = verdict.get("temperature")
    rows: list[tuple[str, Any, str]] = [
        (f"default k policy, rank24-delta8: bytes / position / pass ({verdict.get('family')}; limit "
         f"{fmt(verdict.get('bytes_limit'))})", family.get("bytes_per_position"), "bench_fidelity")]
    for student, by_temp in family.get("students", {}).items():
        for loss, entry in by_temp.get(temp, {}).get("losses", {}).items():
            rows.append((f"gradient rel-L2, uniform tail at k = 64 / default, {loss}, {temp} "
                         f"({verdict.get('family')}, {student}; needed ≥ {fmt(verdict.get('required_gain', {}).get(loss))})",
                         entry.get("gain"), "bench_fidelity"))
    rows.append(("issue 12 acceptance", "pass" if verdict.get("passes") else "fail", "bench_fidelity"))
    return rows


def _ratio(a: Any, b: Any) -> float | None:
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


GPU_CHECK_SCRIPT = "gpu_check.py"
GPU_CHECK_RESULT = RESULTS / "gpu_check" / "gpu_check.json"


def render_gpu_check() -> list[str]:
    """The GPU check's section: how to run it and what it writes (its module docstring), then the figures
    of its last real-shape run, if there is one. It is not part of run_all: it needs a GPU."""
    try:
        doc = ast.get_docstring(ast.parse((BENCH_DIR / GPU_CHECK_SCRIPT).read_text(encoding="utf-8"))) or ""
    except (OSError, SyntaxError):
        doc = ""
    lines = ["## GPU check (`bash benchmarks/gpu_check.sh`, not part of run_all)", "", doc, ""]
    if not GPU_CHECK_RESULT.is_file():
        return lines + ["_No results yet: no GPU has run it._", ""]
    data = json.loads(GPU_CHECK_RESULT.read_text(encoding="utf-8"))
    env = data.get("environment", {})
    lines += [f"Last run {data.get('started', '-')} on {env.get('gpu') or data.get('device')}, torch {env.get('torch')}, "
              f"transformers {env.get('transformers')}, CUDA {env.get('cuda_version')}; {fmt(data.get('seconds'))} s "
              f"of a {fmt(data.get('budget_s'))} s budget.", ""]
    lines += table(("part", "status", "seconds", "limit (s)", "errors", "skipped"),
                   [(name, part.get("status"), part.get("seconds"), part.get("limit_s"),
                     "; ".join(f"{k}: {v}" for k, v in part.get("errors", {}).items()) or "-",
                     ", ".join(part.get("skipped", {})) or "-") for name, part in data.get("parts", {}).items()])
    lines += ["", *table(("figure", "value"), list(data.get("summary", {}).items())), "", *all_figures(data.get("parts", {}))]
    return lines + [""]


def render_document(machine: dict[str, Any], statuses: dict[str, dict[str, Any]]) -> str:
    """The whole of ``docs/benchmarks.md``."""
    results = {bench.name: load_results(bench) for bench in BENCHMARKS}
    fidelity = results["fidelity_k"].get("fidelity_k.json")
    if fidelity:
        plot_fidelity(fidelity, FIGURE)
    sparse_fidelity = results["fidelity"].get("fidelity.json")
    if sparse_fidelity:
        plot_fidelity_v2(sparse_fidelity, FIDELITY_FIGURE)
    lines = [
        "# Benchmarks",
        "",
        "Generated by `bash scripts/benchmarks.sh` (`benchmarks/run_all.py`); do not edit by hand. Every figure "
        "comes from the JSON under `benchmarks/results/`; each section names its script, the arguments it ran "
        "with, and the model sizes, vocabulary and sequence length it used. CPU timings on a shared machine "
        "vary from run to run; ratios measured inside one process are steadier than absolute seconds.",
        "",
        "## Machine",
        "",
        *table(("CPU", "cores (usable)", "memory (GiB)", "GPU", "OS", "python", "torch (threads)", "transformers",
                "pyarrow"),
               [(machine.get("cpu"), f"{machine.get('cores')} ({machine.get('usable_cores')})",
                 machine.get("memory_gib"), machine.get("gpu") or "none", machine.get("os"), machine.get("python"),
                 f"{machine.get('torch')} ({machine.get('torch_threads')})", machine.get("transformers"),
                 machine.get("pyarrow"))]),
        "",
        "## Summary",
        "",
        *table(("figure", "value", "benchmark"), headline(results)),
        "",
        "## Runs",
        "",
        *table(("benchmark", "status", "seconds", "last run"),
               [(b.name, statuses.get(b.name, {}).get("status", "not run"), statuses.get(b.name, {}).get("seconds"),
                 statuses.get(b.name, {}).get("finished", "-")) for b in BENCHMARKS]),
        "",
    ]
    for index, bench in enumerate(BENCHMARKS, start=1):
        lines += [f"## {index}. {bench.title}", ""]
        summary = script_summary(bench.script)
        if summary:
            lines += [summary, ""]
        commands = [shlex.join(["python", f"benchmarks/{bench.script}", *args])
                    for args in (bench.args, *bench.extra_runs)]
        lines += ["```bash", *commands, "```", "", machine_line(statuses.get(bench.name, {})), ""]
        if not results[bench.name]:
            lines += ["_No results yet: run the benchmark._", ""]
            continue
        lines += RENDERERS[bench.name](results[bench.name])
        lines.append("")
    lines += render_gpu_check()
    return "\n".join(lines).rstrip() + "\n"


def machine_line(status: dict[str, Any]) -> str:
    """Where a benchmark's last recorded run happened."""
    machine = status.get("machine")
    if not machine:
        return "Machine: not recorded for these results (they predate run_all); see the table above."
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
    return (f"Machine: {machine.get('cpu')}, {machine.get('usable_cores')} usable cores, "
            f"{fmt(machine.get('memory_gib'))} GiB{gpu}, torch {machine.get('torch')} "
            f"({machine.get('torch_threads')} threads); run {status.get('status')} on {status.get('finished')} "
            f"in {fmt(status.get('seconds'))} s.")


