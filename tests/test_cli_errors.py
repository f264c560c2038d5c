# ruff: noqa: F811  (pytest fixtures imported from another test module are arguments here)
"""Every listed mistake ends in one line naming the input (no traceback), and every command has --version.

The first case runs the installed console script in a fresh process; the others call each command's
``main`` in-process, which is the same code path minus the interpreter start (an escaping exception would
fail the test with its traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train_loop import student_dir  # noqa: F401  (module fixtures)

from stages.cli import tide_cache_main
from stages.eval.cli import main as eval_main
from stages.train.cli import main as train_main
from tide.testing.chat_data import humaneval_chat, write_chat_jsonl
from tide.testing.tiny_models import build_tiny_model

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.fixture(scope="module")
def build_inputs(tmp_path_factory, wedlm_tokenizer, tokenizer_dir, student_tokenizer):
    root = tmp_path_factory.mktemp("build")
    return {"teacher": build_tiny_model("wedlm", root / "wedlm", tokenizer=wedlm_tokenizer),
            "student_tokenizer": tokenizer_dir / "student",
            "sources": write_chat_jsonl(root / "chat.jsonl", humaneval_chat(0, 2))}


def _one_error_line(stderr: str, prog: str, *needles: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(errors) == 1, stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_wrong_cache_path_console_script(tmp_path, student_dir):
    script = Path(sys.executable).parent / "tide-train"
    typo = tmp_path / "cahce"
    result = subprocess.run([str(script), "--cache", str(typo), "--student", str(student_dir), "--output",
                             str(tmp_path / "out"), "--mode", "ce"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    line = _one_error_line(result.stderr, "tide-train", f"--cache {typo}: no such directory")
    assert "rebuild or resume" not in line


def test_unfinished_and_foreign_cache_directories(tmp_path, student_dir, capfd):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "build_config.json").write_text("{}")
    args = ["--student", str(student_dir), "--output", str(tmp_path / "out"), "--mode", "ce"]
    assert train_main(["--cache", str(unfinished), *args]) == 1
    _one_error_line(capfd.readouterr().err, "tide-train", str(unfinished), "has not finished",
                    "rerun its tide-cache build")
    parent = tmp_path / "caches"
    (parent / "wedlm").mkdir(parents=True)
    (parent / "wedlm" / "manifest.json").write_text("{}")
    assert train_main(["--cache", str(parent), *args]) == 1
    _one_error_line(capfd.readouterr().err, "tide-train", "not a cache directory", "wedlm")


def test_wrong_student_path(tmp_path, capfd):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "manifest.json").write_text("{}")
    for student in ("runs/studnet", str(tmp_path / "studnet"), "a/b/c"):
        assert train_main(["--cache", str(cache), "--student", student, "--output", str(tmp_path / "o"),
                           "--mode", "ce"]) == 1
        _one_error_line(capfd.readouterr().err, "tide-train", f"--student {student}: no such directory")


def test_missing_mode_is_refused_with_the_choices(capfd):
    assert train_main(["--cache", "/c", "--student", "/s", "--output", "/o"]) == 2
    _one_error_line(capfd.readouterr().err, "tide-train", "--mode is required", "reverse_calm", "tidal --comp-demo")


def test_source_file_typo(tmp_path, build_inputs, capfd):
    good = Path(build_inputs["sources"])
    for typo, hint in ((good.with_name("chat.jsnl"), "did you mean"), (good.with_name("chta.jsonl"), "no such file")):
        rc = tide_cache_main(["build", "--teacher", str(build_inputs["teacher"]), "--student-tokenizer",
                              str(build_inputs["student_tokenizer"]), "--sources", str(typo), "--output",
                              str(tmp_path / "cache"), "--no-progress", "--device", "cpu"])
        assert rc == 1
        _one_error_line(capfd.readouterr().err, "tide-cache build", str(typo), hint)


@NO_CUDA
def test_device_cuda_without_cuda(tmp_path, build_inputs, student_dir, capfd):
    rc = tide_cache_main(["build", "--teacher", str(build_inputs["teacher"]), "--student-tokenizer",
                          str(build_inputs["student_tokenizer"]), "--sources", str(build_inputs["sources"]),
                          "--output", str(tmp_path / "cache"), "--no-progress", "--device", "cuda"])
    assert rc == 1
    _one_error_line(capfd.readouterr().err, "tide-cache build", "'cuda'", "CUDA is not available")
    rc = eval_main(["generate", "--model", str(student_dir), "--prompt", "hi", "--device", "cuda"])
    assert rc == 1
    _one_error_line(capfd.readouterr().err, "tide-eval", "'cuda'", "CUDA is not available")


def test_eval_model_typo(tmp_path, capfd):
    assert eval_main(["run", "--model", str(tmp_path / "modle"), "--tasks", "gsm8k_cot", "--output",
                      str(tmp_path / "o")]) == 1
    _one_error_line(capfd.readouterr().err, "tide-eval", f"--model {tmp_path / 'modle'}: no such directory")


def test_eval_task_typo(tmp_path, student_dir, capfd):
    pytest.importorskip("lm_eval")
    assert eval_main(["run", "--model", str(student_dir), "--tasks", "gsm8k_cott", "--output",
                      str(tmp_path / "o"), "--device", "cpu"]) == 1
    _one_error_line(capfd.readouterr().err, "tide-eval", "'gsm8k_cott'", "did you mean gsm8k_cot")


def test_debug_shows_the_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "stages.train.cli", "--cache", str(tmp_path / "none"),
                             "--student", "/s", "--output", str(tmp_path / "o"), "--mode", "ce", "--debug"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" in result.stderr and "InputPathError" in result.stderr


@pytest.mark.parametrize("command", [["tide-cache"], ["tide-train"], ["tide-eval"]])
def test_version_everywhere(command):
    from importlib.metadata import version

    result = subprocess.run([str(Path(sys.executable).parent / command[0]), "--version"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{command[0]} {version('tide-offline')}"

