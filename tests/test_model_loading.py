"""Model loading by role: the shared pieces (config.json, from_pretrained arguments), the student loader and
the teacher loader refuse each other's checkpoints, and loading a student never imports teacher code."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tide.models.loading import from_pretrained_kwargs, read_checkpoint_config
from tide.models.student import load_student
from tide.models.teacher import load_teacher
from tide.testing.tiny_models import build_tiny_model

TEACHER_MODULES = ("tide.models.teacher", "tide.models.llada2_moe", "tide.models.wedlm")


def test_read_checkpoint_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3", "hidden_size": 8}))
    assert read_checkpoint_config(tmp_path) == {"model_type": "qwen3", "hidden_size": 8}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json in this checkpoint directory"):
        read_checkpoint_config(empty)
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
        read_checkpoint_config(tmp_path / "missing")


def test_from_pretrained_kwargs_defaults_follow_the_device():
    assert from_pretrained_kwargs(None, "cpu", "sdpa") == {"dtype": torch.float32, "attn_implementation": "sdpa"}
    assert from_pretrained_kwargs(None, "cuda", None) == {"dtype": torch.bfloat16}
    assert from_pretrained_kwargs(torch.float16, "cpu", "eager")["dtype"] == torch.float16


def test_loaders_refuse_the_other_role(tmp_path):
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="not a supported teacher"):
        load_teacher(other)
    with pytest.raises(ValueError, match="not a student type"):
        load_student(other)
    for model_type in ("wedlm", "llada2_moe"):
        teacher = tmp_path / model_type
        teacher.mkdir()
        (teacher / "config.json").write_text(json.dumps({"model_type": model_type}))
        with pytest.raises(ValueError, match=f"model_type='{model_type}' is not a student type"):
            load_student(teacher)


def test_loading_a_student_imports_no_teacher_module(tmp_path, student_tokenizer):
    """At run time, not only in the import graph: a fresh interpreter loads a saved student and runs it."""
    path = build_tiny_model("student", tmp_path / "student", tokenizer=student_tokenizer, hidden_size=16,
                            num_layers=1)
    code = (
        "import sys, torch; from tide.models.student import load_student; "
        f"model = load_student({str(path)!r}); model(input_ids=torch.tensor([[1, 2, 3]])); "
        f"print(sorted(m for m in sys.modules if m in {TEACHER_MODULES!r}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_teacher_types_load_lazily_and_each_model_module_registers_its_type():
    """Importing the teacher runner imports no teacher model module; importing a model module registers its
    model type with the Auto classes (a fresh interpreter, so nothing was registered before)."""
    code = (
        "import sys; import tide.models.teacher; from transformers import AutoConfig; "
        "print(sorted(m for m in sys.modules if m in ('tide.models.llada2_moe', 'tide.models.wedlm'))); "
        "import tide.models.llada2_moe, tide.models.a2d_qwen3; "
        "print(type(AutoConfig.for_model('llada2_moe')).__name__, type(AutoConfig.for_model('a2d-qwen3')).__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-2:] == ["[]", "LLaDA2MoeConfig A2DQwen3Config"]
