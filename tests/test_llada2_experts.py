"""LLaDA2-MoE routed experts: the grouped matmul (default), the per-expert loop (reference) and transformers'
batched form agree with a per-token formula, in fp32 and bf16, for every way tokens can fall on experts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tide.models.llada2_moe import LLaDA2MoeConfig, LLaDA2MoeExperts, LLaDA2MoeSparseMoeBlock, route_tokens
from tide.models.teacher import load_teacher
from tide.testing.tiny_models import build_tiny_model

IMPLEMENTATIONS = ("grouped_mm", "eager", "batched_mm")
HIDDEN, WIDTH, EXPERTS = 32, 16, 16


def experts_config(implementation: str, **overrides) -> LLaDA2MoeConfig:
    values = dict(
        vocab_size=64, hidden_size=HIDDEN, intermediate_size=48, moe_intermediate_size=WIDTH,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        num_experts=EXPERTS, num_experts_per_tok=2, n_group=4, topk_group=2, num_shared_experts=1,
        pad_token_id=None, eos_token_id=None, mask_token_id=63,
    )
    values.update(overrides)
    config = LLaDA2MoeConfig(**values)
    config._experts_implementation = implementation
    return config


def random_experts(implementation: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> LLaDA2MoeExperts:
    experts = LLaDA2MoeExperts(experts_config(implementation))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        experts.gate_up_proj.copy_(torch.randn(experts.gate_up_proj.shape, generator=gen) * 0.2)
        experts.down_proj.copy_(torch.randn(experts.down_proj.shape, generator=gen) * 0.2)
    return experts.to(dtype)


def per_token_reference(experts: LLaDA2MoeExperts, x, ids, weights) -> torch.Tensor:
    """Σ_k w_k · down_e(silu(gate_e x) * up_e x), one token and one slot at a time, in float64."""
    gate_up, down = experts.gate_up_proj.double(), experts.down_proj.double()
    rows = []
    for t in range(x.shape[0]):
        acc = torch.zeros(HIDDEN, dtype=torch.float64)
        for e, w in zip(ids[t].tolist(), weights[t].tolist(), strict=True):
            h = gate_up[e] @ x[t].double()
            acc += w * (down[e] @ (F.silu(h[:WIDTH]) * h[WIDTH:]))
        rows.append(acc)
    return torch.stack(rows) if rows else torch.zeros(0, HIDDEN, dtype=torch.float64)


def routing_case(case: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(expert ids (N, k), weights fp32 (N, k)) of a named distribution of tokens over the 16 experts."""
    gen = torch.Generator().manual_seed(len(case))
    if case == "spread":  # 40 tokens, two distinct random experts each
        ids = torch.stack([torch.randperm(EXPERTS, generator=gen)[:2] for _ in range(40)])
    elif case == "most_experts_empty":  # 13 of 16 experts receive nothing, expert 0 and the last among them
        ids = torch.tensor([[5, 9], [9, 3], [3, 5], [5, 3], [9, 5]])
    elif case == "single_token":
        ids = torch.tensor([[11, 2]])
    elif case == "all_to_one_pair":  # every token on experts 7 and 2
        ids = torch.tensor([[7, 2]] * 23)
    elif case == "all_to_one_top1":  # top-1 routing, every token on the last expert
        ids = torch.full((9, 1), EXPERTS - 1)
    else:
        raise ValueError(case)
    weights = torch.rand(ids.shape, generator=gen) + 0.1
    return ids, weights


CASES = ("spread", "most_experts_empty", "single_token", "all_to_one_pair", "all_to_one_top1")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_experts_match_per_token_formula_fp32(implementation, case):
    experts = random_experts(implementation)
    ids, weights = routing_case(case)
    x = torch.randn(ids.shape[0], HIDDEN, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = experts(x, ids, weights)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out.double(), per_token_reference(experts, x, ids, weights), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_grouped_equals_loop_fp32(case):
    ids, weights = routing_case(case)
    x = torch.randn(ids.shape[0], HIDDEN, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        loop = random_experts("eager")(x, ids, weights)
        grouped = random_experts("grouped_mm")(x, ids, weights)
    torch.testing.assert_close(grouped, loop, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", ("spread", "most_experts_empty", "all_to_one_pair"))
def test_bf16_grouped_matches_loop_and_fp32(case):
    ids, weights = routing_case(case)
    x = torch.randn(ids.shape[0], HIDDEN, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        loop = random_experts("eager", torch.bfloat16)(x.bfloat16(), ids, weights)
        grouped = random_experts("grouped_mm", torch.bfloat16)(x.bfloat16(), ids, weights)
        full = random_experts("grouped_mm", torch.float32)(x.bfloat16().float(), ids, weights)
    assert grouped.dtype == loop.dtype == torch.bfloat16
    scale = full.abs().max()
    # same bf16 products, accumulation order may differ: a few bf16 ulps of the output scale
    assert (grouped.float() - loop.float()).abs().max() <= 2 ** -6 * scale
    assert (grouped.float() - full).abs().max() <= 2 ** -5 * scale


def test_grouped_gradients_equal_loop_gradients():
    ids, weights = routing_case("most_experts_empty")
    grads = []
    for implementation in ("eager", "grouped_mm"):
        experts = random_experts(implementation)
        x = torch.randn(ids.shape[0], HIDDEN, generator=torch.Generator().manual_seed(6), requires_grad=True)
        w = weights.clone().requires_grad_()
        experts(x, ids, w).pow(2).sum().backward()
        grads.append((x.grad, w.grad, experts.gate_up_proj.grad, experts.down_proj.grad))
    for loop_grad, grouped_grad in zip(*grads, strict=True):
        torch.testing.assert_close(grouped_grad, loop_grad, rtol=1e-5, atol=1e-6)
    unused = torch.ones(EXPERTS, dtype=torch.bool)
    unused[ids.flatten()] = False
    assert grads[1][3][unused].abs().max() == 0 and grads[1][3][~unused].abs().amax(dim=(1, 2)).min() > 0


def test_grouped_path_reads_no_tensor_data_on_the_host():
    """On the meta device every value is unknown: a path that runs there never syncs with the host to
    read routing counts. The loop cannot (it needs the counts as Python ints)."""
    with torch.device("meta"):
        grouped = LLaDA2MoeSparseMoeBlock(experts_config("grouped_mm")).to(torch.bfloat16)
        loop = LLaDA2MoeSparseMoeBlock(experts_config("eager")).to(torch.bfloat16)
        x = torch.empty(2, 64, HIDDEN, dtype=torch.bfloat16)
        out = grouped(x)
        assert out.device.type == "meta" and out.shape == x.shape and out.dtype == torch.bfloat16
        with pytest.raises((NotImplementedError, RuntimeError)):
            loop(x)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_moe_block_is_routing_plus_shared_expert(implementation):
    torch.manual_seed(7)
    block = LLaDA2MoeSparseMoeBlock(experts_config(implementation))
    with torch.no_grad():
        for tensor in (block.gate.weight, block.experts.gate_up_proj, block.experts.down_proj):
            tensor.normal_(0, 0.2)
        block.gate.expert_bias.normal_(0, 0.1)
        x = torch.randn(3, 11, HIDDEN)
        out = block(x)
        flat = x.reshape(-1, HIDDEN)
        ids, weights = route_tokens(
            flat @ block.gate.weight.T, block.gate.expert_bias, top_k=2, n_group=4, topk_group=2,
            routed_scaling_factor=2.5,
        )
        expected = per_token_reference(block.experts, flat, ids, weights) + block.shared_experts(flat).double()
        empty = block(torch.zeros(0, 4, HIDDEN))
    torch.testing.assert_close(out.reshape(-1, HIDDEN).double(), expected, rtol=1e-5, atol=1e-5)
    assert empty.shape == (0, 4, HIDDEN)


def test_loaded_teacher_defaults_to_grouped_and_equals_the_loop(tmp_path, llama3_tokenizer):
    path = build_tiny_model("llada2", tmp_path / "llada2", tokenizer=llama3_tokenizer, seed=8, num_experts=8)
    teacher = load_teacher(path, dtype=torch.float32)
    assert teacher.config._experts_implementation == "grouped_mm"
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        grouped = teacher(ids).logits
        teacher.set_experts_implementation("eager")
        assert teacher.config._experts_implementation == "eager"
        loop = teacher(ids).logits
    torch.testing.assert_close(grouped, loop, rtol=1e-5, atol=1e-5)
