# ruff: noqa: F811  (pytest fixtures imported from another test module are arguments here)
"""The trained student is a model anyone can load: stock transformers in a fresh interpreter (remote code
from the saved modeling file, no project import; or no remote code after ``import tide``) gives the
project loader's logits; the model card states the run; ``--push-to-hub`` uploads the directory (to a
local stand-in); a LoRA run trains only the adapters and its merged student equals base + adapters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_loop import base_config, cache_dir, make_cache, student_dir  # noqa: F401  (module fixtures)

from stages.train.lora import ADAPTER_DIR
from tide.models.student import load_student

INPUT_IDS = [[3, 17, 99, 4, 151669, 5, 6, 7]]
LOGITS_SCRIPT = """
import json, sys, torch
{prelude}
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32{remote}).eval()
with torch.no_grad():
    logits = model(input_ids=torch.tensor({ids})).logits
project = sorted(m for m in sys.modules if m.split('.')[0] in ('tide', 'stages', 'cache_schema'))
print(json.dumps({{"logits": logits[0, :, :64].tolist(), "project_modules": project,
                   "class": type(model).__module__ + '.' + type(model).__name__}}))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir, student_dir):
    from stages.train.loop import train

    output = tmp_path_factory.mktemp("run") / "student"
    train(base_config(cache_dir, student_dir, output, max_steps=2, save_every=0, report_to=["jsonl"]))
    return output


def _stock_logits(path: Path, tmp_path: Path, *, remote: bool) -> dict:
    code = LOGITS_SCRIPT.format(prelude="" if remote else "import tide", ids=INPUT_IDS,
                                remote=", trust_remote_code=True" if remote else "")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _project_logits(path: Path) -> torch.Tensor:
    model = load_student(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(INPUT_IDS)).logits[0, :, :64]


def test_stock_transformers_with_remote_code_and_no_project_import_gives_the_project_logits(trained, tmp_path):
    config = json.loads((trained / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_a2d_qwen3.A2DQwen3LMHeadModel"
    assert (trained / "modeling_a2d_qwen3.py").is_file()
    out = _stock_logits(trained, tmp_path, remote=True)
    assert out["project_modules"] == []
    assert out["class"].endswith("modeling_a2d_qwen3.A2DQwen3LMHeadModel")
    torch.testing.assert_close(torch.tensor(out["logits"]), _project_logits(trained), rtol=1e-5, atol=1e-5)


def test_stock_transformers_after_import_tide_uses_no_remote_code(trained, tmp_path):
    out = _stock_logits(trained, tmp_path, remote=False)
    assert out["class"] == "tide.models.modeling_a2d_qwen3.A2DQwen3LMHeadModel"
    assert not (tmp_path / "modules").exists() or not any((tmp_path / "modules").rglob("modeling_a2d_qwen3.py"))
    torch.testing.assert_close(torch.tensor(out["logits"]), _project_logits(trained), rtol=1e-5, atol=1e-5)


def test_model_card_states_the_run(trained, cache_dir):
    from stages.train.preflight import cache_fingerprint

    card = (trained / "README.md").read_text()
    manifest = json.loads((Path(cache_dir) / "manifest.json").read_text())
    metrics = [json.loads(line) for line in (trained / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert card.startswith("---\nlibrary_name: transformers")
    assert "| mode | `tidal` with CompDemo targets |" in card
    assert f"`{cache_fingerprint(cache_dir)}`" in card and cache_fingerprint(cache_dir).startswith("sha256:")
    assert f"| teacher | {manifest['teacher']['name']} |" in card
    assert "| optimizer steps | 2 of 2 |" in card
    assert f"| loss_ce | {metrics[-1]['loss_ce']:.6g} |" in card


class LocalHub:
    """A stand-in for ``huggingface_hub.HfApi``: repositories are folders under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.created: list[tuple[str, bool]] = []

    def create_repo(self, *, repo_id: str, private: bool, exist_ok: bool, repo_type: str) -> None:
        self.created.append((repo_id, private))
        (self.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)

    def upload_folder(self, *, repo_id: str, folder_path: str, repo_type: str, commit_message: str,
                      ignore_patterns: list[str]) -> str:
        import fnmatch
        import shutil

        source = Path(folder_path)
        for path in source.rglob("*"):
            relative = path.relative_to(source).as_posix()
            if path.is_file() and not any(fnmatch.fnmatch(relative, p) for p in ignore_patterns):
                target = self.root / repo_id / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
        return f"local://{repo_id}"


def test_push_to_hub_uploads_a_loadable_student_without_checkpoints(tmp_path, cache_dir, student_dir):
    from stages.train.loop import train

    hub = LocalHub(tmp_path / "hub")
    config = base_config(cache_dir, student_dir, tmp_path / "run", max_steps=1, save_every=0, report_to=["jsonl"],
                         push_to_hub=True, hub_model_id="me/tiny-student", hub_private=True)
    train(config, hub_api=hub)
    uploaded = tmp_path / "hub" / "me" / "tiny-student"
    assert hub.created == [("me/tiny-student", True)]
    assert {"config.json", "model.safetensors", "modeling_a2d_qwen3.py", "README.md", "tokenizer_config.json"} <= {
        p.name for p in uploaded.iterdir()}
    assert not (uploaded / "checkpoints").exists() and not (uploaded / "logs").exists()
    torch.testing.assert_close(_project_logits(uploaded), _project_logits(tmp_path / "run"), rtol=0, atol=0)


def test_lora_trains_only_adapters_and_the_merged_student_is_base_plus_adapters(tmp_path, cache_dir, student_dir):
    pytest.importorskip("peft")
    from stages.train.loop import train

    r, alpha, targets = 4, 8.0, ["q_proj", "v_proj"]
    output = tmp_path / "lora"
    config = base_config(cache_dir, student_dir, output, max_steps=2, save_every=0, report_to=["jsonl"], lr=1e-2,
                         lora_r=r, lora_alpha=alpha, lora_targets=targets)
    train(config)
    base = load_file(str(Path(student_dir) / "model.safetensors"))
    merged = load_file(str(output / "model.safetensors"))
    adapters = load_file(str(output / ADAPTER_DIR / "adapter_model.safetensors"))
    base_model = load_student(student_dir)
    expected_trainable = sum(r * (m.in_features + m.out_features) for name, m in base_model.named_modules()
                             if name.rsplit(".", 1)[-1] in targets)
    assert sum(t.numel() for t in adapters.values()) == expected_trainable
    changed = []
    for name, weight in base.items():
        if name not in merged:
            continue
        if name.endswith(tuple(f"{t}.weight" for t in targets)):
            prefix = "base_model.model." + name.removesuffix(".weight")
            a, b = adapters[f"{prefix}.lora_A.weight"], adapters[f"{prefix}.lora_B.weight"]
            torch.testing.assert_close(merged[name], weight + (alpha / r) * b @ a, rtol=1e-5, atol=1e-6, msg=name)
            changed.append(name)
        else:
            assert torch.equal(merged[name], weight), f"{name} is not an adapter target but changed"
    assert len(changed) == 2 and not torch.equal(merged[changed[0]], base[changed[0]])
    assert json.loads((output / ADAPTER_DIR / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        Path(student_dir).resolve())
    from_adapters = _project_logits(output / ADAPTER_DIR)
    torch.testing.assert_close(from_adapters, _project_logits(output), rtol=1e-5, atol=1e-5)
