"""Teacher families for the fidelity benchmark: full-vocabulary teacher and student logits at N positions.

The power-law families live on the real 151,646-id shared slice (the Qwen vocabulary of WeDLM and the
student), so the tail a top-k store leaves out is as wide as in production. Three families, chosen to
bracket what a real teacher does:

* ``llm_calibrated`` — a power-law family shaped like an LLM's next-token distributions. At each position
  the ids are ranked by a Gumbel draw around their frequency in real text (the first 4,096 ranks; see
  ``_ranked_logits``) (the Qwen tokenization of the
  Python standard library), so frequent ids lead as in a real model; the logit of rank r is
  b·[r = 1] − α·log r − β·(log r)². (α, β, b) are drawn per position so that the mean entropy at T = 1 is
  ≈ 2 nats, a mixture of confident and open positions: the per-token log loss of 7–8B LLMs on web text
  (perplexities of about 5.5–9 reported for Llama-2-7B / Llama-3-8B on WikiText), which a calibrated model's
  entropy matches. The student is the teacher seen through noise: 0.85·z_T + N(0, 1) per id.
* ``kn_python`` — a teacher *trained on real text*: an interpolated Kneser-Ney 5-gram over the Qwen tokens of
  the stdlib's training modules, queried at positions of held-out modules; two trained students, Kneser-Ney
  bigram and trigram models on the same tokens (tails informative but coarser than the teacher's; the
  trigram's closer). Its
  vocabulary is the ids the training text contains plus one unknown id (a closed vocabulary, as n-gram
  models are used): spreading KN's uniform base over the 124k Qwen ids the text never shows would make
  them 91% of the teacher's mass at T = 2, an artefact of the smoothing rather than of language.
* ``synthetic_peaked`` — the project's earlier synthetic family (ranked by a Zipf-like prior over ids,
  logit of rank r = −α log r − 0.12 (log r)² + 0.3·N(0, 1) + a top-1 bonus) with its noisy student
  0.7·z_T + 0.7·std(z_T)·N(0, 1): a student whose tail is mostly noise.

Each family also gives the id frequencies of its own data (what a build would count for its id table).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

VOCAB = 151_646
TEXT_END = 151_643  # <|endoftext|>: separates files in the token stream
BATCH = 64  # rows of a power-law family generated at once
HEAD = 4096  # ranks of a power-law row given to Gumbel-top ids (see _ranked_logits)


@dataclass
class Family:
    """A teacher at M positions and its students at the first N ≤ M of them.

    teacher: (M, V) fp32 logits (all M positions go into the storage measurement); students: name → (N, V)
    logits (the fidelity measurement uses the first N positions); gold, t: (M,); id_counts: (V,) the id
    frequencies of the family's data (what a build counts for its id table)."""

    name: str
    description: str
    teacher: torch.Tensor
    students: dict[str, torch.Tensor]
    gold: torch.Tensor
    t: torch.Tensor
    id_counts: np.ndarray
    stats: dict = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return int(self.teacher.shape[1])

    @property
    def num_scored(self) -> int:
        """N: the positions the students are scored on."""
        return int(next(iter(self.students.values())).shape[0])


def describe(logits: torch.Tensor, chunk: int = 64) -> dict[str, float]:
    """Mean entropy, mean top-1 probability and mean mass outside the top 64 at T = 1 and T = 2."""
    out: dict[str, list[float]] = {}
    for temperature in (1.0, 2.0):
        entropy, top1, outside = [], [], []
        for start in range(0, logits.shape[0], chunk):
            lp = torch.log_softmax(logits[start:start + chunk].double() / temperature, dim=-1)
            p = lp.exp()
            entropy.append(float(-(p * lp).sum(-1).sum()))
            top1.append(float(p.max(-1).values.sum()))
            outside.append(float((1 - p.topk(64, dim=-1).values.sum(-1)).sum()))
        n = logits.shape[0]
        out[f"T={temperature:g}"] = {"entropy": sum(entropy) / n, "top1": sum(top1) / n,
                                     "mass_outside_top64": sum(outside) / n}
    return out


# --------------------------------------------------------------------------------------------- real text


def stdlib_tokens(workdir: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """(train stream, held-out files) of Qwen ids of the stdlib's modules, split by module as the
    replication splits them; files in the train stream are separated by <|endoftext|>."""
    from benchmarks.replication.data import is_heldout_module, iter_stdlib_files
    from tide.testing.tokenizers import build_qwen_tokenizer

    cached = workdir / "stdlib_tokens.npz"
    if cached.is_file():
        data = np.load(cached)
        heldout = np.split(data["heldout"], data["heldout_splits"])
        return data["train"], heldout
    tokenizer = build_qwen_tokenizer(workdir / "qwen_tokenizer")
    train, heldout = [], []
    for module, path in iter_stdlib_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int32)
        (heldout if is_heldout_module(module) else train).append(ids)
    stream = np.concatenate([np.append(ids, TEXT_END) for ids in train]).astype(np.int32)
    splits = np.cumsum([h.shape[0] for h in heldout])[:-1]
    np.savez(cached, train=stream, heldout=np.concatenate(heldout), heldout_splits=splits)
    return stream, heldout


def kn_python_family(num_positions: int, scored: int, workdir: Path, seed: int = 0) -> Family:
    """Kneser-Ney 5-gram teacher with a bigram and a trigram student on the stdlib (see the module docstring);
    the vocabulary is the training text's ids (ascending Qwen id) and one unknown id last."""
    from benchmarks.kneser_ney import KneserNey

    train, heldout = stdlib_tokens(workdir)
    seen = np.unique(train)
    unknown = seen.shape[0]
    compact = np.full(VOCAB, unknown, dtype=np.int64)
    compact[seen] = np.arange(unknown)
    vocab = unknown + 1
    train = compact[train]
    teacher_model = KneserNey(train, 5, vocab)
    student_models = {"bigram": KneserNey(train, 2, vocab), "trigram": KneserNey(train, 3, vocab)}
    rng = np.random.default_rng(seed)
    files = [compact[f] for f in heldout if f.shape[0] > 8]
    teacher = torch.empty(num_positions, vocab)
    students = {name: torch.empty(scored, vocab) for name in student_models}
    gold = torch.empty(num_positions, dtype=torch.long)
    for row in range(num_positions):
        ids = files[int(rng.integers(len(files)))]
        position = int(rng.integers(4, ids.shape[0]))
        history = ids[:position]
        teacher[row] = torch.from_numpy(np.log(teacher_model.distribution(history)))
        if row < scored:
            for name, model in student_models.items():
                students[name][row] = torch.from_numpy(np.log(model.distribution(history)))
        gold[row] = int(ids[position])
    return Family(
        name="kn_python",
        description=("interpolated Kneser-Ney 5-gram teacher trained on the Qwen tokens of the Python stdlib's "
                     f"training modules ({train.shape[0]:,} tokens, closed vocabulary of the {unknown:,} ids they "
                     "contain + 1 unknown), queried at held-out modules; students: Kneser-Ney bigram and trigram "
                     "models trained on the same tokens"),
        teacher=teacher, students=students, gold=gold, t=_timesteps(num_positions, rng),
        id_counts=np.bincount(train, minlength=vocab))


# ------------------------------------------------------------------------------------------- power laws


def _ranked_logits(gen: torch.Generator, log_prior: torch.Tensor, by_rank: torch.Tensor) -> torch.Tensor:
    """Logits (B, V) whose id at rank r of row b gets ``by_rank[b, r]`` (``by_rank`` descending in r).

    The first :data:`HEAD` ranks go to the Gumbel-top ids over ``log_prior`` (a draw without replacement, in
    order); every other id keeps its own index's value, except that the ids below HEAD left without a head
    rank take the values the head ids beyond HEAD held. Which id holds a rank past HEAD matters to no
    measurement — a store keeps at most a few hundred entries, log tails and gold log-probs depend on values
    alone, the students' noise is the same for every id — and a top-``HEAD`` costs far less than sorting all
    151,646 keys of every row."""
    rows, vocab = by_rank.shape
    head = min(HEAD, vocab)
    uniform = torch.rand(by_rank.shape, generator=gen).clamp_min(1e-20)
    top = torch.topk(log_prior[None, :] - torch.log(-torch.log(uniform)), head, dim=1).indices
    logits = by_rank.clone()
    for row in range(rows):
        ids = top[row]
        taken = torch.zeros(head, dtype=torch.bool)
        taken[ids[ids < head]] = True
        logits[row, torch.nonzero(~taken)[:, 0]] = by_rank[row, ids[ids >= head]]  # displaced tail values
        logits[row, ids] = by_rank[row, :head]
    return logits


def calibrated_logits(num_positions: int, log_prior: torch.Tensor, gen: torch.Generator,
                      rng: np.random.Generator) -> torch.Tensor:
    """(num_positions, VOCAB) teacher logits of the calibrated power-law family (see the module docstring);
    ``log_prior``: log frequency of every id in real text."""
    log_rank = torch.log(torch.arange(1, VOCAB + 1, dtype=torch.float32))
    confident = rng.random(num_positions) < 0.4
    alpha = np.where(confident, rng.uniform(1.3, 2.2, num_positions), rng.uniform(0.8, 1.3, num_positions))
    beta = rng.uniform(0.02, 0.12, num_positions)
    bonus = np.where(confident, rng.uniform(4.0, 9.0, num_positions), rng.uniform(0.0, 2.0, num_positions))
    teacher = torch.empty(num_positions, VOCAB)
    for start in range(0, num_positions, BATCH):
        part = slice(start, min(start + BATCH, num_positions))
        a, b, c = (torch.from_numpy(x[part]).float()[:, None] for x in (alpha, beta, bonus))
        by_rank = -a * log_rank - b * log_rank**2
        by_rank[:, 0] += c[:, 0]
        teacher[part] = _ranked_logits(gen, log_prior, by_rank)
    return teacher


def real_text_log_prior(id_counts: np.ndarray) -> torch.Tensor:
    """log(count + 0.5) of every id: the calibrated family's frequency prior."""
    return torch.from_numpy(np.log(id_counts.astype(np.float64) + 0.5)).float()


def llm_calibrated_family(num_positions: int, scored: int, id_counts: np.ndarray, seed: int = 0) -> Family:
    """The calibrated power-law family (see the module docstring); ``id_counts``: real-text id frequencies."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    teacher = calibrated_logits(num_positions, real_text_log_prior(id_counts), gen, rng)
    gold = torch.multinomial(torch.softmax(teacher, dim=-1), 1, generator=gen)[:, 0]
    student = 0.85 * teacher[:scored] + torch.randn((scored, VOCAB), generator=gen)
    return Family(
        name="llm_calibrated",
        description=("power law over Qwen-frequency-ranked ids, logit of rank r = b[r=1] - a log r - c log(r)^2, "
                     "40% confident positions (a~U(1.3,2.2), b~U(4,9)) and 60% open ones (a~U(0.8,1.3), "
                     "b~U(0,2)), c~U(0.02,0.12); calibrated to a mean entropy of about 2 nats at T = 1; "
                     "student 0.85*z_T + N(0,1)"),
        teacher=teacher, students={"perturbed": student}, gold=gold, t=_timesteps(num_positions, rng),
        id_counts=np.asarray(id_counts))


def synthetic_peaked_family(num_positions: int, scored: int, seed: int = 0) -> Family:
    """The project's earlier synthetic family with its noisy student (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    log_prior = -1.5 * torch.log1p(torch.arange(VOCAB, dtype=torch.float32) / 100.0)
    log_rank = torch.log(torch.arange(1, VOCAB + 1, dtype=torch.float32))
    teacher = torch.empty(num_positions, VOCAB)
    for start in range(0, num_positions, BATCH):
        part = slice(start, min(start + BATCH, num_positions))
        rows = part.stop - part.start
        alpha = 0.8 + 0.8 * torch.rand(rows, 1, generator=gen)
        by_rank = -alpha * log_rank - 0.12 * log_rank**2 + 0.3 * torch.randn(rows, VOCAB, generator=gen)
        by_rank[:, 0] += 3.0 * torch.rand(rows, generator=gen)
        teacher[part] = _ranked_logits(gen, log_prior, by_rank)
    gold = torch.multinomial(torch.softmax(teacher, dim=-1), 1, generator=gen)[:, 0]
    noise = torch.randn((scored, VOCAB), generator=gen)
    student = 0.7 * teacher[:scored] + 0.7 * teacher[:scored].std(dim=1, keepdim=True) * noise
    prior = torch.softmax(log_prior, dim=0)
    sample = torch.multinomial(prior, 200_000, replacement=True, generator=gen).numpy()
    return Family(
        name="synthetic_peaked",
        description=("ids ranked by a Zipf-like prior -1.5 log(1 + id/100) (Gumbel top-k), logit of rank r = "
                     "-a log r - 0.12 log(r)^2 + 0.3 N(0,1), a ~ U(0.8, 1.6), top-1 bonus U(0, 3); noisy student "
                     "0.7 z_T + 0.7 std(z_T) N(0,1)"),
        teacher=teacher, students={"noisy": student}, gold=gold, t=_timesteps(num_positions, rng),
        id_counts=np.bincount(sample, minlength=VOCAB))


def _timesteps(n: int, rng: np.random.Generator) -> torch.Tensor:
    return torch.from_numpy(rng.uniform(0.05, 0.95, size=n).astype(np.float32))
