"""TeacherRunner: outputs at selected positions equal those of a full forward, in every regime.

References are built here independently of the runner: one unpadded forward per row (LLaDA2 paper), a
mask written from the rule of docs/design.md#attention-rule over the real tokens only (the concatenated regimes), and for WeDLM
native WeDLM's own inference form — a plain causal forward per block over [clean prefix, the block
reordered observed-first] with logical position ids.
"""

from __future__ import annotations

import pytest
import torch

from tide.models.teacher import TeacherRunner, infer_family, load_teacher
from tide.targets import sparse_targets
from tide.testing.tiny_models import build_tiny_model

BLOCK = 8
LENGTHS = [20, 13]
SEQ = 20


@pytest.fixture(scope="module")
def wedlm(tmp_path_factory, wedlm_tokenizer):
    return load_teacher(build_tiny_model("wedlm", tmp_path_factory.mktemp("wedlm"), tokenizer=wedlm_tokenizer, seed=5))


@pytest.fixture(scope="module")
def llada2(tmp_path_factory, llama3_tokenizer):
    return load_teacher(build_tiny_model("llada2", tmp_path_factory.mktemp("llada2"), tokenizer=llama3_tokenizer, seed=6))


def _noised_batch(mask_id: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(10, 20_000, (2, SEQ), generator=gen)
    masked = torch.rand(2, SEQ, generator=gen) < 0.5
    lengths = torch.tensor(LENGTHS)
    valid = torch.arange(SEQ)[None, :] < lengths[:, None]
    masked &= valid
    noised = torch.where(masked, torch.full_like(clean, mask_id), clean)
    noised[1, LENGTHS[1]:] = 3  # right padding with an ordinary id
    clean[1, LENGTHS[1]:] = 3
    rows, positions = masked.nonzero(as_tuple=True)
    return noised, clean, lengths, rows, positions


def _rule_mask(length: int, x0_first: bool) -> torch.Tensor:
    """attention rule of docs/design.md#attention-rule over the 2·length real tokens of one row (no padding anywhere)."""
    idx = torch.arange(2 * length)
    second = idx >= length
    is_x0 = ~second if x0_first else second
    blk = (idx % length) // BLOCK
    q_x0, k_x0, q_b, k_b = is_x0[:, None], is_x0[None, :], blk[:, None], blk[None, :]
    return (
        ((q_b == k_b) & ~q_x0 & ~k_x0) | ((q_b > k_b) & ~q_x0 & k_x0) | ((q_b >= k_b) & q_x0 & k_x0)
    )


def _reference_logits(model, family, regime, noised, clean, rows, positions, mask_id) -> torch.Tensor:
    cache: dict[tuple[int, int], tuple[torch.Tensor, dict[int, int]]] = {}

    def full_forward(r: int, p: int) -> tuple[torch.Tensor, dict[int, int]]:
        """Full logits of the forward that row r / position p belongs to, and position → sequence index."""
        n = LENGTHS[r]
        xt, x0 = noised[r, :n], clean[r, :n]
        if family == "llada2" and regime == "paper":
            return model(input_ids=xt[None]).logits[0], {q: q for q in range(n)}
        if regime == "paper" or family == "llada2":
            x0_first = family == "wedlm"
            ids = torch.cat([x0, xt] if x0_first else [xt, x0])[None]
            pos = torch.cat([torch.arange(n), torch.arange(n)])[None]
            mask = _rule_mask(n, x0_first)[None, None]
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[0]
            return logits, {q: (n + q if x0_first else q) for q in range(n)}
        # WeDLM native: causal forward over [clean prefix, block reordered observed-first].
        start = (p // BLOCK) * BLOCK
        block_pos = torch.arange(start, min(start + BLOCK, n))
        observed = block_pos[xt[block_pos] != mask_id]
        masked = block_pos[xt[block_pos] == mask_id]
        order = torch.cat([observed, masked])
        ids = torch.cat([x0[:start], xt[order]])[None]
        pos = torch.cat([torch.arange(start), order])[None]
        logits = model(input_ids=ids, position_ids=pos).logits[0]  # stock Qwen3: causal by default
        return logits, {int(q): start + slot for slot, q in enumerate(order.tolist())}

    out = []
    with torch.no_grad():
        for r, p in zip(rows.tolist(), positions.tolist(), strict=True):
            key = (r, p // BLOCK if (family, regime) == ("wedlm", "native") else 0)
            if key not in cache:
                cache[key] = full_forward(r, p)
            logits, where = cache[key]
            out.append(logits[where[p]])
    return torch.stack(out).float()


CASES = [("llada2", "paper"), ("llada2", "native"), ("wedlm", "paper"), ("wedlm", "native")]


@pytest.mark.parametrize("family,regime", CASES)
def test_selected_outputs_equal_full_forward(family, regime, request):
    model = request.getfixturevalue(family)
    mask_id = model.config.mask_token_id
    noised, clean, lengths, rows, positions = _noised_batch(mask_id)
    runner = TeacherRunner(model, regime=regime, block_size=BLOCK, head_chunk_size=3)
    assert runner.family == family
    got = runner.logits_at(noised, lengths, rows, positions, clean_ids=clean)
    ref = _reference_logits(model, family, regime, noised, clean, rows, positions, mask_id)
    assert got.dtype == torch.float32 and got.shape == ref.shape and len(ref) > 5
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=2e-4)

    gold = clean[rows, positions]
    expected_lp = torch.log_softmax(ref, dim=-1).gather(1, gold[:, None]).squeeze(1)
    got_lp = runner.gold_logprobs(noised, lengths, rows, positions, gold, clean_ids=clean)
    torch.testing.assert_close(got_lp, expected_lp, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("family", ["llada2", "wedlm"])
def test_regimes_differ(family, request):
    """The regimes really change the teacher's view (so the equality tests above can fail)."""
    model = request.getfixturevalue(family)
    noised, clean, lengths, rows, positions = _noised_batch(model.config.mask_token_id)
    paper = TeacherRunner(model, regime="paper", block_size=BLOCK).logits_at(
        noised, lengths, rows, positions, clean_ids=clean
    )
    native = TeacherRunner(model, regime="native", block_size=BLOCK).logits_at(
        noised, lengths, rows, positions, clean_ids=clean
    )
    assert (paper - native).abs().max() > 1e-2


def test_wedlm_native_reordered_and_logical_forms_agree(wedlm):
    noised, clean, lengths, rows, positions = _noised_batch(wedlm.config.mask_token_id, seed=4)
    all_rows = torch.cat([torch.zeros(SEQ, dtype=torch.long), torch.ones(LENGTHS[1], dtype=torch.long)])
    all_pos = torch.cat([torch.arange(SEQ), torch.arange(LENGTHS[1])])
    for r, p in ((rows, positions), (all_rows, all_pos)):
        logical = TeacherRunner(wedlm, regime="native", block_size=BLOCK, wedlm_native_form="logical")
        reordered = TeacherRunner(wedlm, regime="native", block_size=BLOCK, wedlm_native_form="reordered")
        torch.testing.assert_close(
            logical.logits_at(noised, lengths, r, p, clean_ids=clean),
            reordered.logits_at(noised, lengths, r, p, clean_ids=clean),
            atol=2e-4, rtol=2e-4,
        )


def test_eager_attention_gives_the_same_outputs(wedlm):
    noised, clean, lengths, rows, positions = _noised_batch(wedlm.config.mask_token_id)
    sdpa = TeacherRunner(wedlm, regime="paper", block_size=BLOCK).logits_at(
        noised, lengths, rows, positions, clean_ids=clean
    )
    wedlm.set_attn_implementation("eager")
    try:
        eager = TeacherRunner(wedlm, regime="paper", block_size=BLOCK).logits_at(
            noised, lengths, rows, positions, clean_ids=clean
        )
    finally:
        wedlm.set_attn_implementation("sdpa")
    torch.testing.assert_close(eager, sdpa, atol=2e-4, rtol=2e-4)


def test_topk_targets_chunked_equal_targets_of_full_logits(wedlm):
    noised, clean, lengths, rows, positions = _noised_batch(wedlm.config.mask_token_id)
    gold = clean[rows, positions]
    runner = TeacherRunner(wedlm, regime="paper", block_size=BLOCK, head_chunk_size=4)
    temps = (1.0, 2.0)
    got = runner.topk_targets(noised, lengths, rows, positions, gold, k=8, temperatures=temps, clean_ids=clean)
    ref_logits = _reference_logits(wedlm, "wedlm", "paper", noised, clean, rows, positions, None)
    expected = sparse_targets(ref_logits, gold, k=8, shared_vocab_size=151_646, temperatures=temps)
    assert torch.equal(got.topk_ids, expected.topk_ids)
    for name in ("topk_values", "log_tails", "gold_logprob"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), atol=2e-4, rtol=2e-4)

    def own_topk(logits, gold_ids, *, k, shared_vocab_size, temperatures):
        return torch.topk(logits[:, :shared_vocab_size], k).indices

    ids = runner.topk_targets(
        noised, lengths, rows, positions, gold, k=5, clean_ids=clean, targets_fn=own_topk
    )
    assert torch.equal(ids, torch.topk(ref_logits[:, :151_646], 5).indices)


def test_bad_inputs_are_rejected(wedlm, llada2):
    noised, clean, lengths, rows, positions = _noised_batch(wedlm.config.mask_token_id)
    runner = TeacherRunner(wedlm, regime="paper", block_size=BLOCK)
    with pytest.raises(ValueError, match="inside its row"):
        runner.logits_at(noised, lengths, torch.tensor([1]), torch.tensor([LENGTHS[1]]), clean_ids=clean)
    with pytest.raises(ValueError, match="pass clean_ids"):
        runner.logits_at(noised, lengths, rows, positions)
    with pytest.raises(ValueError, match="lengths"):
        runner.logits_at(noised, torch.tensor([20]), rows, positions, clean_ids=clean)
    with pytest.raises(ValueError, match="regime"):
        TeacherRunner(wedlm, regime="bidirectional")
    with pytest.raises(ValueError, match="gold_ids"):
        runner.gold_logprobs(noised, lengths, rows, positions, rows[:1], clean_ids=clean)
    with pytest.raises(ValueError, match="embedding rows"):
        TeacherRunner(llada2, regime="paper").logits_at(noised, lengths, rows, positions)
    assert infer_family(llada2.config) == "llada2" and infer_family(wedlm.config) == "wedlm"
    # LLaDA2 paper needs no clean ids.
    noised, clean, lengths, rows, positions = _noised_batch(llada2.config.mask_token_id)
    lp = TeacherRunner(llada2, regime="paper").gold_logprobs(noised, lengths, rows, positions, rows)
    assert lp.shape == rows.shape and bool((lp < 0).all())


def test_manifest_accepts_exactly_the_runner_regimes():
    """cache_schema cannot import model code, so it keeps its own list of regimes: it must be the runner's."""
    from cache_schema.manifest import REGIMES as MANIFEST_REGIMES
    from tide.models.teacher import REGIMES as RUNNER_REGIMES

    assert tuple(MANIFEST_REGIMES) == tuple(RUNNER_REGIMES)
