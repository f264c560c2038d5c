"""lm-eval integration: the registered ``tide_bd3lm`` model through lm-eval's own evaluator, offline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

from stages.eval.lm_eval_model import TideBD3LM
from stages.eval.protocol import TaskSetting
from stages.eval.provenance import PROVENANCE_FIELDS
from stages.eval.runner import build_task_manager, run_task
from stages.eval.think import THINK_BLOCK
from stages.provenance import weights_fingerprint
from tide.sampler import BlockDiffusionSampler, SamplerConfig

REPO = Path(__file__).resolve().parents[1]
TASK_DIR = REPO / "tests" / "data" / "eval"
TASK = "tide_tiny_letters"
FAVOURED = " B"
MODEL_ARGS = {"block_size": 4, "steps": 4, "gen_length": 8, "batch_size": 2, "seed": 3}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, student_tokenizer):
    """Tiny Qwen3 saved with save_pretrained. Its weights are edited so that " B" wins everywhere: residual
    channel 0 is a constant 10 (embedding column 0, no layer writes to it) and the LM-head row of " B"
    reads that channel with weight 10; everything else is random."""
    favoured = student_tokenizer.encode(FAVOURED)
    assert len(favoured) == 1
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=len(student_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
        tie_word_embeddings=False, initializer_range=0.2,
    )
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 10.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0] = 0.0
            layer.mlp.down_proj.weight[0] = 0.0
        model.lm_head.weight[favoured[0], 0] = 10.0
    path = tmp_path_factory.mktemp("tiny_student")
    model.save_pretrained(path)
    student_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lm(checkpoint):
    return TideBD3LM(pretrained=str(checkpoint), **MODEL_ARGS)


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # the test task's data_files path is relative to the repository root


def load_docs():
    return [json.loads(line) for line in (TASK_DIR / "tiny_letters.jsonl").read_text().splitlines()]


def expected_outputs(checkpoint, tokenizer, *, chat: bool, think: bool) -> list[str]:
    """Generate every document's answer with the sampler directly (no lm-eval, no wrapper)."""
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    sampler = BlockDiffusionSampler(
        model, mask_token_id=tokenizer.mask_token_id,
        stop_token_ids=[tokenizer.eos_token_id, tokenizer.pad_token_id], pad_token_id=tokenizer.pad_token_id,
    )
    config = SamplerConfig(block_size=4, steps=4, gen_length=8, seed=3)
    outputs = []
    for doc in load_docs():
        text = f"Question: {doc['question']}\nAnswer:"
        if chat:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        if think:
            text += THINK_BLOCK
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        generated = tokenizer.decode(sampler.generate([ids], config).sequences[0], skip_special_tokens=True)
        for stop in ("\n", tokenizer.eos_token):
            generated = generated.split(stop)[0]
        outputs.append(generated)
    return outputs


def hand_score(outputs: list[str]) -> float:
    hits = 0
    for output, doc in zip(outputs, load_docs(), strict=True):
        found = re.search(r"\b([ABCD])\b", output)
        hits += int(found is not None and found.group(1) == doc["answer"])
    return hits / len(outputs)


def test_simple_evaluate_on_registered_model(checkpoint, student_tokenizer, in_repo):
    results = simple_evaluate(
        model="tide_bd3lm",
        model_args={"pretrained": str(checkpoint), **MODEL_ARGS},
        tasks=[TASK],
        task_manager=build_task_manager([TASK_DIR], include_defaults=False),
        apply_chat_template=True,
        log_samples=True,
        bootstrap_iters=0,
    )
    # ChatML has no thinking logic: the default think-block rule appends the empty block to each prompt
    expected = expected_outputs(checkpoint, student_tokenizer, chat=True, think=True)
    assert hand_score(expected) == pytest.approx(0.4)  # the " B" rig answers B on every document
    assert results["results"][TASK]["exact_match,extract-letter"] == pytest.approx(hand_score(expected))
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    assert [s["resps"][0][0] for s in samples] == expected
    assert samples[0]["arguments"][0][0].startswith("<|im_start|>user\nQuestion:")
    assert samples[0]["arguments"][0][0].endswith("<|im_start|>assistant\n" + THINK_BLOCK)
    config = results["config"]
    assert config["tide_weights_fingerprint"] == weights_fingerprint(checkpoint)
    assert config["tide_generation"]["block_size"] == 4


def test_run_task_writes_results_with_provenance(lm, checkpoint, student_tokenizer, in_repo, tmp_path):
    setting = TaskSetting(TASK, gen_length=8, steps=4, num_fewshot=0, metric="exact_match,extract-letter")
    score = run_task(
        lm, setting, tmp_path, task_manager=build_task_manager([TASK_DIR], include_defaults=False),
        apply_chat_template=False,
    )
    expected = expected_outputs(checkpoint, student_tokenizer, chat=False, think=False)
    assert score.score == pytest.approx(hand_score(expected))
    record = json.loads((tmp_path / TASK / "results.json").read_text())
    provenance = record["tide_provenance"]
    assert set(PROVENANCE_FIELDS) <= set(provenance)
    assert provenance["checkpoint"] == str(Path(checkpoint).resolve())
    assert provenance["weights_fingerprint"] == weights_fingerprint(checkpoint)
    assert provenance["weights_fingerprint"].startswith("sha256:")
    assert (provenance["task"], provenance["num_fewshot"]) == (TASK, 0)
    assert (provenance["block_size"], provenance["steps"], provenance["gen_length"]) == (4, 4, 8)
    assert (provenance["remasking"], provenance["temperature"], provenance["cfg_scale"]) == ("low_confidence", 0.0, 0.0)
    assert provenance["chat_template_applied"] is False
    # no chat template, so no context went through the think-block rule
    assert provenance["think_block"] == {"mode": "auto", "enable_thinking": False, "stripped_from_answers": True,
                                         "contexts": {"rendered_by_template": 0, "inserted": 0, "absent": 0}}
    assert provenance["gen_kwargs"] == {}
    assert {"torch", "transformers", "lm_eval", "tide-offline"} <= set(provenance["versions"])
    assert all(provenance["versions"][name] for name in ("torch", "transformers", "lm_eval"))
    assert record["summary"] == {"task": TASK, "metric": "exact_match,extract-letter", "score": score.score,
                                 "stderr": score.stderr, "also": {}}
    # the default bootstrap gives the mean its closed-form standard error, sqrt(p(1 - p) / (n - 1))
    n = len(expected)
    assert score.stderr == pytest.approx((score.score * (1 - score.score) / (n - 1)) ** 0.5)
    lines = [json.loads(line) for line in (tmp_path / TASK / "samples.jsonl").read_text().splitlines()]
    assert sorted((s["doc_id"], s["resps"][0][0]) for s in lines) == list(enumerate(expected))
    assert all(s["arguments"][0][0].startswith("Question:") for s in lines)


def test_likelihood_requests_are_refused(lm, checkpoint):
    request = Instance("loglikelihood", doc={}, arguments=("context", " continuation"), idx=0)
    with pytest.raises(NotImplementedError, match="multiple-choice"):
        lm.loglikelihood([request])
    with pytest.raises(NotImplementedError, match="perplexity"):
        lm.loglikelihood_rolling([request])
    with pytest.raises(ValueError, match="think_block='maybe' must be one of"):
        TideBD3LM(pretrained=str(checkpoint), think_block="maybe")


def test_request_config_caps_length_and_scales_steps(lm):
    lm.configure(steps=16, gen_length=16)
    try:
        config, until = lm.request_config({"until": ["Q:"], "max_gen_toks": 8})
        assert (config.gen_length, config.steps, config.block_size) == (8, 8, 4)
        assert until == ["Q:", lm.tokenizer.eos_token]
        config, _ = lm.request_config({"until": "\n"})
        assert (config.gen_length, config.steps) == (16, 16)
        assert lm.decode(lm.tokenizer.encode(" B B\nQ: C"), ["\n"]) == " B B"
    finally:
        lm.configure(steps=MODEL_ARGS["steps"], gen_length=MODEL_ARGS["gen_length"])


def test_generate_command_prints_completions(checkpoint, capsys):
    from stages.eval.cli import main

    argv = ["generate", "--model", str(checkpoint), "--prompt", "Say B", "--block-size", "4",
            "--gen-length", "8", "--steps", "4"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "### prompt\nSay B\n### completion\n" + FAVOURED * 8 + "\n" in printed


@pytest.mark.slow
def test_run_command_prints_table(checkpoint, in_repo, tmp_path, capsys):
    from stages.eval.cli import main

    argv = ["run", "--model", str(checkpoint), "--tasks", TASK, "--include-path", str(TASK_DIR),
            "--output", str(tmp_path), "--block-size", "4", "--no-chat-template"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["tasks"][0]["task"] == TASK
    assert summary["average"] == pytest.approx(summary["tasks"][0]["score"])
    assert TASK in table and "average" in table
    provenance = json.loads((tmp_path / TASK / "results.json").read_text())["tide_provenance"]
    assert (provenance["gen_length"], provenance["steps"], provenance["block_size"]) == (256, 256, 4)


# ------------------------------------------------------------------------------------ the think-block rule

USER = [{"role": "user", "content": "Complete the function."}]
HUMANEVAL_PREFIX = "Here is the completed function:\n```python\ndef add(a, b):\n"
MBPP_PREFIX = "\n```python\n"


def _context(lm, prefix=None):
    chat = USER if prefix is None else [*USER, {"role": "assistant", "content": prefix}]
    return lm.apply_chat_template(chat, add_generation_prompt=prefix is None)


def test_think_block_goes_where_the_template_would_put_it_never_after_a_code_prefix(lm, monkeypatch):
    monkeypatch.setattr(lm, "think_record", type(lm.think_record)("auto"))
    header = "<|im_start|>user\nComplete the function.<|im_end|>\n<|im_start|>assistant\n"
    assert _context(lm) == header + THINK_BLOCK  # ChatML lacks it: appended to the generation prompt
    # the code prefix ends the context (transformers may trim its trailing whitespace)
    humaneval = _context(lm, HUMANEVAL_PREFIX)
    assert humaneval.rstrip() == header + THINK_BLOCK + HUMANEVAL_PREFIX.rstrip()
    mbpp = _context(lm, MBPP_PREFIX)
    assert mbpp.rstrip() == header + THINK_BLOCK + "\n```python"
    assert lm.think_record.as_dict()["contexts"] == {"rendered_by_template": 0, "inserted": 3, "absent": 0}


def test_a_thinking_template_renders_the_block_and_nothing_is_inserted(lm, monkeypatch, qwen3_style_tokenizer):
    monkeypatch.setattr(lm, "tokenizer", qwen3_style_tokenizer)
    monkeypatch.setattr(lm, "think_record", type(lm.think_record)("auto"))
    prompt = _context(lm)  # rendered with enable_thinking=False
    assert prompt.endswith("<|im_start|>assistant\n" + THINK_BLOCK) and prompt.count("<think>") == 1
    humaneval = _context(lm, HUMANEVAL_PREFIX)
    assert humaneval.rstrip().endswith("<|im_start|>assistant\n" + THINK_BLOCK + HUMANEVAL_PREFIX.rstrip())
    assert humaneval.count("<think>") == 1
    assert lm.think_record.as_dict()["contexts"] == {"rendered_by_template": 2, "inserted": 0, "absent": 0}


def test_think_block_never_inserts_nothing(lm, monkeypatch):
    monkeypatch.setattr(lm, "think_block", "never")
    monkeypatch.setattr(lm, "think_record", type(lm.think_record)("never"))
    assert THINK_BLOCK not in _context(lm) and THINK_BLOCK not in _context(lm, HUMANEVAL_PREFIX)
    assert lm.think_record.as_dict()["contexts"]["absent"] == 2


def test_answers_lose_their_think_blocks_before_the_stop_strings(lm):
    encode = lm.tokenizer.encode
    assert lm.decode(encode("<think>\n\n</think>\n\nB"), ["</s>", "\n"]) == "B"  # stripped, then the stop
    assert lm.decode(encode("<think>\nhmm\n</think> C. done"), ["\n"]) == "C. done"
    assert lm.decode(encode("\nB"), ["</s>", "\n"]) == ""  # the stop string comes first here
    assert lm.decode(encode("<think>unclosed B"), ["\n"]) == "<think>unclosed B"
    im_end = lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in lm.sampler.stop_token_ids
