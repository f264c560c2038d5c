"""LLaDA2-MoE implementation: checkpoint naming, loading path, routing, attention masks, RoPE, gradients."""

from __future__ import annotations

import json
import math

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from tide.bd3lm import attention_mask_for, bd3lm_bool_mask, bd3lm_position_ids, bool_to_additive
from tide.models.llada2_moe import (
    LLaDA2MoeConfig,
    LLaDA2MoeForCausalLM,
    LLaDA2MoeModel,
    apply_partial_rotary,
    register_llada2_moe,
    rotary_cos_sin,
    route_tokens,
)

VOCAB = 1000


def tiny_config(**overrides) -> LLaDA2MoeConfig:
    values = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        moe_intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=8,
        num_shared_experts=1,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        first_k_dense_replace=1,
        routed_scaling_factor=2.5,
        pad_token_id=999,
        eos_token_id=998,
        mask_token_id=997,
    )
    values.update(overrides)
    return LLaDA2MoeConfig(**values)


def make_model(seed: int = 0, **overrides) -> LLaDA2MoeForCausalLM:
    torch.manual_seed(seed)
    model = LLaDA2MoeForCausalLM(tiny_config(**overrides)).eval()
    # Non-zero expert biases so that choice and weights really differ.
    for layer in model.model.layers[1:]:
        layer.mlp.gate.expert_bias.copy_(torch.randn(8) * 0.1)
    return model


@pytest.fixture(scope="module")
def model() -> LLaDA2MoeForCausalLM:
    return make_model()


@pytest.fixture(scope="module")
def saved_dir(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("llada2_tiny")
    model.save_pretrained(path)
    return path


# ---------------------------------------------------------------- naming and loading


def checkpoint_names(num_experts: int = 8) -> tuple[set[str], set[str]]:
    """The weight names of layers 0 (dense MLP) and 1 (MoE) as the released checkpoint writes them."""
    attention = {
        "input_layernorm.weight",
        "attention.query_key_value.weight",
        "attention.query_layernorm.weight",
        "attention.key_layernorm.weight",
        "attention.dense.weight",
        "post_attention_layernorm.weight",
    }
    layer0 = {f"model.layers.0.{n}" for n in attention} | {
        f"model.layers.0.mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")
    }
    layer1 = {
        *(f"model.layers.1.{n}" for n in attention),
        "model.layers.1.mlp.gate.weight",
        "model.layers.1.mlp.gate.expert_bias",
        *(
            f"model.layers.1.mlp.experts.{e}.{p}.weight"
            for e in range(num_experts)
            for p in ("gate_proj", "up_proj", "down_proj")
        ),
        *(f"model.layers.1.mlp.shared_experts.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")),
    }
    return layer0, layer1


def test_saved_files_use_checkpoint_names(saved_dir):
    with safe_open(saved_dir / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
    layer0, layer1 = checkpoint_names()
    assert {k for k in keys if k.startswith("model.layers.0.")} == layer0
    assert {k for k in keys if k.startswith("model.layers.1.")} == layer1
    assert {k for k in keys if not k.startswith("model.layers.")} == {
        "model.word_embeddings.weight",
        "model.norm.weight",
        "lm_head.weight",
    }
    # fused QKV: (heads + 2 * kv_heads) * head_dim rows, no bias; shared expert width = moe_intermediate * 1
    assert shapes["model.layers.0.attention.query_key_value.weight"] == ((4 + 2 * 2) * 16, 64)
    assert shapes["model.layers.1.mlp.shared_experts.gate_proj.weight"] == (32, 64)
    assert shapes["model.layers.1.mlp.experts.7.gate_proj.weight"] == (32, 64)
    assert shapes["model.layers.1.mlp.experts.7.down_proj.weight"] == (64, 32)
    assert shapes["model.layers.0.mlp.gate_proj.weight"] == (96, 64)
    assert shapes["model.layers.1.mlp.gate.weight"] == (8, 64)


def test_in_memory_experts_are_stacked(model):
    sd = model.state_dict()
    assert sd["model.layers.1.mlp.experts.gate_up_proj"].shape == (8, 2 * 32, 64)
    assert sd["model.layers.1.mlp.experts.down_proj"].shape == (8, 64, 32)
    assert not any(k.startswith("model.layers.1.mlp.experts.0.") for k in sd)
    # untied head
    assert sd["lm_head.weight"].data_ptr() != sd["model.word_embeddings.weight"].data_ptr()
    assert model.get_input_embeddings() is model.model.word_embeddings
    assert model.model.get_input_embeddings() is model.model.word_embeddings
    assert model.get_output_embeddings() is model.lm_head


def test_per_expert_checkpoint_loads_into_stacked_experts(model, saved_dir, tmp_path):
    """A checkpoint written by hand in the released per-expert layout (not by save_pretrained) loads with
    expert e's gate rows then up rows in gate_up_proj[e], and save_pretrained writes the same tensors back."""
    with safe_open(saved_dir / "model.safetensors", "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    gen = torch.Generator().manual_seed(21)
    for e in range(8):
        for p, shape in (("gate_proj", (32, 64)), ("up_proj", (32, 64)), ("down_proj", (64, 32))):
            tensors[f"model.layers.2.mlp.experts.{e}.{p}.weight"] = torch.randn(shape, generator=gen)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_bytes((saved_dir / "config.json").read_bytes())
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    experts = loaded.model.layers[2].mlp.experts
    for e in (0, 5, 7):
        gate = tensors[f"model.layers.2.mlp.experts.{e}.gate_proj.weight"]
        up = tensors[f"model.layers.2.mlp.experts.{e}.up_proj.weight"]
        assert torch.equal(experts.gate_up_proj[e, :32], gate)
        assert torch.equal(experts.gate_up_proj[e, 32:], up)
        assert torch.equal(experts.down_proj[e], tensors[f"model.layers.2.mlp.experts.{e}.down_proj.weight"])
    resaved = tmp_path / "resaved"
    loaded.save_pretrained(resaved)
    with safe_open(resaved / "model.safetensors", "pt") as f:
        assert set(f.keys()) == set(tensors)
        for key in ("model.layers.2.mlp.experts.3.up_proj.weight", "model.layers.1.mlp.experts.6.down_proj.weight"):
            assert torch.equal(f.get_tensor(key), tensors[key])


def test_save_and_auto_load_round_trip(model, saved_dir):
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    config = AutoConfig.from_pretrained(saved_dir)
    assert type(config) is LLaDA2MoeConfig
    loaded = AutoModelForCausalLM.from_pretrained(saved_dir).eval()
    assert type(loaded) is LLaDA2MoeForCausalLM
    # Equal weights; the loaded (memory-mapped) tensors may take another kernel path, so allow rounding.
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(
        loaded.model.layers[2].mlp.gate.expert_bias, model.model.layers[2].mlp.gate.expert_bias
    )
    base = AutoModel.from_pretrained(saved_dir).eval()
    assert type(base) is LLaDA2MoeModel
    with torch.no_grad():
        torch.testing.assert_close(base(ids).last_hidden_state, model.model(ids).last_hidden_state, rtol=1e-5, atol=1e-5)


def test_loads_checkpoint_style_config_without_remote_code(model, saved_dir, tmp_path):
    """A config.json written the way the real checkpoint's is (top-level rope keys, remote-code auto_map,
    upstream class name, extra keys) loads through the registered classes."""
    for f in saved_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((saved_dir / "config.json").read_text())
    del cfg["rope_parameters"]
    cfg.update(
        {
            "architectures": ["LLaDA2MoeModelLM"],
            "auto_map": {
                "AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
                "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
                "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM",
            },
            "rope_theta": 600000,
            "partial_rotary_factor": 0.5,
            "rope_scaling": None,
            "torch_dtype": "float32",
            "moe_router_enable_expert_bias": True,
            "router_dtype": "fp32",
            "norm_head": False,
        }
    )
    del cfg["dtype"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is LLaDA2MoeForCausalLM
    assert loaded.config.rope_parameters["rope_theta"] == 600000
    ids = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_bf16_load_keeps_router_in_fp32(model, saved_dir):
    loaded = AutoModelForCausalLM.from_pretrained(saved_dir, dtype=torch.bfloat16).eval()
    moe = loaded.model.layers[1].mlp
    assert loaded.lm_head.weight.dtype == torch.bfloat16
    assert moe.experts.gate_up_proj.dtype == torch.bfloat16
    assert moe.experts.down_proj.dtype == torch.bfloat16
    assert moe.gate.weight.dtype == torch.float32
    assert moe.gate.expert_bias.dtype == torch.float32
    ids = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(ids).logits
        low = loaded(ids).logits.float()
    assert torch.isfinite(low).all()
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()


def test_register_is_idempotent():
    register_llada2_moe()
    register_llada2_moe()
    assert type(AutoConfig.for_model("llada2_moe", vocab_size=VOCAB)) is LLaDA2MoeConfig


def test_config_rejects_inconsistent_moe_sizes():
    # transformers 5.x configs run `validate_*` checks through huggingface_hub's strict dataclasses
    with pytest.raises(StrictDataclassClassValidationError, match="n_group"):
        tiny_config(num_experts=9)
    with pytest.raises(StrictDataclassClassValidationError, match="num_experts_per_tok"):
        tiny_config(num_experts_per_tok=5)  # 1 kept group of 4 experts
    with pytest.raises(StrictDataclassClassValidationError, match="num_key_value_heads"):
        tiny_config(num_key_value_heads=3)
    with pytest.raises(StrictDataclassClassValidationError, match="rotary_dim"):
        tiny_config(partial_rotary_factor=0.2)  # 16 * 0.2 -> 3 dims, odd


# ---------------------------------------------------------------- routing


def brute_force_route(logits, bias, top_k, n_group, topk_group, scale):
    """Per-token reference written with plain Python lists."""
    ids_out, w_out = [], []
    num_experts = len(bias)
    per_group = num_experts // n_group
    for row in logits.tolist():
        scores = [1.0 / (1.0 + math.exp(-x)) for x in row]
        choice = [s + b for s, b in zip(scores, bias.tolist(), strict=True)]
        group_score = []
        for g in range(n_group):
            members = sorted(choice[g * per_group : (g + 1) * per_group], reverse=True)
            group_score.append(members[0] + members[1])
        kept = sorted(range(n_group), key=lambda g: group_score[g], reverse=True)[:topk_group]
        candidates = [e for e in range(num_experts) if e // per_group in kept]
        chosen = sorted(candidates, key=lambda e: choice[e], reverse=True)[:top_k]
        total = sum(scores[e] for e in chosen)
        ids_out.append(chosen)
        w_out.append([scores[e] / total * scale for e in chosen])
    return ids_out, w_out


@pytest.mark.parametrize(
    "num_experts,n_group,topk_group,top_k",
    [(8, 2, 1, 2), (8, 2, 2, 3), (16, 4, 2, 4)],
)
def test_route_tokens_matches_brute_force(num_experts, n_group, topk_group, top_k):
    gen = torch.Generator().manual_seed(num_experts + top_k)
    logits = torch.randn(200, num_experts, generator=gen) * 2
    bias = torch.randn(num_experts, generator=gen) * 0.3
    ids, weights = route_tokens(
        logits, bias, top_k=top_k, n_group=n_group, topk_group=topk_group, routed_scaling_factor=2.5
    )
    ref_ids, ref_w = brute_force_route(logits, bias, top_k, n_group, topk_group, 2.5)
    assert ids.tolist() == ref_ids
    assert torch.allclose(weights, torch.tensor(ref_w), atol=1e-6)
    assert torch.allclose(weights.sum(-1), torch.full((200,), 2.5), atol=1e-5)


def test_route_tokens_bias_steers_choice_only():
    logits = torch.tensor([[3.0, 2.0, -1.0, -2.0]])
    no_bias = torch.zeros(4)
    ids, w = route_tokens(logits, no_bias, top_k=1, n_group=1, topk_group=1, routed_scaling_factor=1.0)
    assert ids.tolist() == [[0]]
    # A large bias on expert 3 makes it chosen; its weight still comes from its raw sigmoid score.
    bias = torch.tensor([0.0, 0.0, 0.0, 10.0])
    ids, w = route_tokens(logits, bias, top_k=2, n_group=1, topk_group=1, routed_scaling_factor=1.0)
    assert ids.tolist() == [[3, 0]]
    s3, s0 = torch.sigmoid(torch.tensor(-2.0)), torch.sigmoid(torch.tensor(3.0))
    assert torch.allclose(w, torch.stack([s3, s0]).unsqueeze(0) / (s3 + s0))


def test_route_tokens_rejects_bad_shapes():
    with pytest.raises(ValueError, match="expert_bias"):
        route_tokens(
            torch.zeros(3, 8), torch.zeros(7), top_k=2, n_group=2, topk_group=1, routed_scaling_factor=1.0
        )
    with pytest.raises(ValueError, match="router_logits"):
        route_tokens(
            torch.zeros(8), torch.zeros(8), top_k=2, n_group=2, topk_group=1, routed_scaling_factor=1.0
        )


# ---------------------------------------------------------------- attention masks


def _bd3lm_batch(seq_len=8, block=4, batch=2, seed=5):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, 2 * seq_len), generator=gen)
    allowed = bd3lm_bool_mask(seq_len, block)[None, None].expand(batch, 1, -1, -1)
    positions = bd3lm_position_ids(seq_len, batch)
    return ids, allowed, positions


def test_sdpa_and_eager_agree_for_bool_and_additive_masks(model):
    ids, allowed, positions = _bd3lm_batch()
    additive = bool_to_additive(allowed)
    eager = make_model(attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        ref = model(ids, attention_mask=allowed, position_ids=positions).logits
        for m, mask in ((model, additive), (eager, allowed), (eager, additive)):
            out = m(ids, attention_mask=mask, position_ids=positions).logits
            assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_flex_attention_matches_sdpa(model, saved_dir):
    ids, allowed, positions = _bd3lm_batch()
    flex = AutoModelForCausalLM.from_pretrained(saved_dir, attn_implementation="flex_attention").eval()
    assert flex.config._attn_implementation == "flex_attention"
    block_mask = attention_mask_for(allowed[:, 0], "flex_attention")
    with torch.no_grad():
        ref = model(ids, attention_mask=allowed, position_ids=positions).logits
        out = flex(ids, attention_mask=block_mask, position_ids=positions).logits
    assert torch.allclose(out, ref, atol=1e-5)
    with pytest.raises(ValueError, match="BlockMask"):
        flex(ids, attention_mask=allowed, position_ids=positions)


def test_mask_decides_attention():
    # The per-expert loop: the grouped matmul's rounding depends on how many tokens share an expert, and
    # changing one token can move other tokens between experts; exact equality below is about attention.
    model = make_model(experts_implementation="eager")
    assert model.config._experts_implementation == "eager"
    seq_len, block = 8, 4
    ids, allowed, positions = _bd3lm_batch(seq_len, block, batch=1)
    # Query 1 (noisy block 0) may see keys 0..3 only; key 12 (clean block 1) is hidden from it.
    q, hidden_key, visible_key = 1, 2 * seq_len - 4, 3
    assert not allowed[0, 0, q, hidden_key] and allowed[0, 0, q, visible_key]
    changed = ids.clone()
    changed[0, hidden_key] = (ids[0, hidden_key] + 1) % VOCAB
    changed_visible = ids.clone()
    changed_visible[0, visible_key] = (ids[0, visible_key] + 1) % VOCAB
    with torch.no_grad():
        base = model(ids, attention_mask=allowed, position_ids=positions).logits
        other = model(changed, attention_mask=allowed, position_ids=positions).logits
        other_visible = model(changed_visible, attention_mask=allowed, position_ids=positions).logits
    assert torch.equal(base[0, q], other[0, q])
    assert not torch.allclose(base[0, q], other_visible[0, q])
    # The clean half of block 1 sees key 12, so it does change there.
    assert not torch.allclose(base[0, hidden_key + 1], other[0, hidden_key + 1])


def test_full_mask_equals_none_and_is_bidirectional(model):
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(6))
    full = torch.ones(2, 1, 10, 10, dtype=torch.bool)
    with torch.no_grad():
        none = model(ids).logits
        assert torch.allclose(model(ids, attention_mask=full).logits, none, atol=1e-6)
        changed = ids.clone()
        changed[:, -1] = (ids[:, -1] + 1) % VOCAB
        later = model(changed).logits
    # Position 0 sees the last token (no causal mask).
    assert not torch.allclose(none[:, 0], later[:, 0])


def test_bad_masks_are_rejected(model):
    ids = torch.randint(0, VOCAB, (2, 6))
    with pytest.raises(ValueError, match="4-D"):
        model(ids, attention_mask=torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not fit"):
        model(ids, attention_mask=torch.ones(2, 1, 6, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="dtype"):
        model(ids, attention_mask=torch.ones(2, 1, 6, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="position_ids"):
        model(ids, position_ids=torch.arange(5))
    with pytest.raises(ValueError, match="KV cache"):
        model(ids, use_cache=True)


# ---------------------------------------------------------------- positions and RoPE


def test_partial_rope_formula_and_untouched_dims():
    head_dim, rotary_dim, theta = 16, 8, 600000.0
    x = torch.randn(1, 2, 5, head_dim, generator=torch.Generator().manual_seed(7))
    positions = torch.tensor([[0, 3, 7, 100, 2048]])
    cos, sin = rotary_cos_sin(positions, rotary_dim, theta, torch.float32)
    out = apply_partial_rotary(x, cos, sin)
    # dims rotary_dim.. are position independent: identical to the input
    assert torch.equal(out[..., rotary_dim:], x[..., rotary_dim:])
    # rotated dims follow the rotate-half formula: pair (i, i + half), angle = pos * theta^(-2i / rotary_dim)
    half = rotary_dim // 2
    for s, pos in enumerate(positions[0].tolist()):
        for i in range(half):
            a = pos * theta ** (-2 * i / rotary_dim)
            x1, x2 = x[0, :, s, i], x[0, :, s, i + half]
            assert torch.allclose(out[0, :, s, i], x1 * math.cos(a) - x2 * math.sin(a), atol=1e-5)
            assert torch.allclose(out[0, :, s, i + half], x2 * math.cos(a) + x1 * math.sin(a), atol=1e-5)
    # position 0 is the identity, other positions move the rotated dims
    assert torch.allclose(out[..., 0, :], x[..., 0, :])
    assert not torch.allclose(out[..., 1, :rotary_dim], x[..., 1, :rotary_dim])


def test_explicit_position_ids_are_used(model):
    ids = torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        default = model(ids).logits
        explicit = model(ids, position_ids=torch.arange(8)[None]).logits
        duplicated = model(ids, position_ids=torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])).logits
    assert torch.equal(default, explicit)
    assert not torch.allclose(default[:, 4:], duplicated[:, 4:])


# ---------------------------------------------------------------- outputs and gradients


def test_hidden_states_and_head_compose(model):
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        base = model.model(ids)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert torch.equal(out.hidden_states[0], model.model.word_embeddings(ids))
    assert torch.equal(out.hidden_states[-1], base.last_hidden_state)
    assert torch.equal(model.lm_head(base.last_hidden_state[:, [1, 4]]), out.logits[:, [1, 4]])


def test_labels_loss_has_no_shift(model):
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(10))
    labels = ids.clone()
    labels[:, :2] = -100
    with torch.no_grad():
        out = model(ids, labels=labels)
    logp = torch.log_softmax(out.logits.float(), -1)
    expected = -logp[:, 2:].gather(-1, ids[:, 2:, None]).mean()
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_backward_reaches_all_kinds_of_weights():
    m = make_model(seed=11).train()
    ids, allowed, positions = _bd3lm_batch(seed=12)
    moe = m.model.layers[1].mlp
    chosen = []
    hook = moe.gate.register_forward_hook(lambda module, args, out: chosen.append(out[0].flatten()))
    m(ids, attention_mask=allowed, position_ids=positions).logits.float().pow(2).mean().backward()
    hook.remove()
    for name, param in (
        ("embeddings", m.model.word_embeddings.weight),
        ("qkv", m.model.layers[0].attention.query_key_value.weight),
        ("qk-norm", m.model.layers[1].attention.query_layernorm.weight),
        ("router", moe.gate.weight),
        ("shared expert", moe.shared_experts.down_proj.weight),
        ("head", m.lm_head.weight),
    ):
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, (
            name
        )
    # exactly the experts some token chose get a gradient (stacked weights, one row per expert)
    used = torch.zeros(8, dtype=torch.bool)
    used[chosen[0]] = True
    for grad in (moe.experts.gate_up_proj.grad, moe.experts.down_proj.grad):
        assert torch.equal(grad.flatten(1).abs().sum(1) > 0, used)


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated")
def test_gradient_checkpointing_gives_same_gradients():
    ids, allowed, positions = _bd3lm_batch(seed=13)
    grads = []
    for checkpointing in (False, True):
        m = make_model(seed=14).train()
        if checkpointing:
            m.gradient_checkpointing_enable()
            assert m.model.layers[0].gradient_checkpointing
        m(ids, attention_mask=allowed, position_ids=positions).logits.pow(2).mean().backward()
        grads.append(m.model.layers[1].attention.query_key_value.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
