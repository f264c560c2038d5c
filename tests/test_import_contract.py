"""The import contract of pyproject.toml (``[tool.importlinter]``): the dependency rules hold for the
repository, and the same check fails, naming the import chain, when training imports a teacher module."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tide", "stages", "cache_schema")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run ``lint-imports`` on the packages under ``root`` with the contract of ``root/pyproject.toml``."""
    executable = Path(sys.executable).with_name("lint-imports")
    command = [str(executable) if executable.is_file() else "lint-imports", "--no-cache", "--no-logo"]
    env = dict(os.environ, PYTHONPATH=str(root))  # the packages under root, not the installed ones
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_repository_keeps_every_contract():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken." in result.stdout


def test_a_teacher_import_in_training_breaks_the_contract(tmp_path):
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    loop = tmp_path / "stages" / "train" / "loop.py"
    loop.write_text(loop.read_text(encoding="utf-8") + "\nfrom tide.models.teacher import load_teacher  # noqa\n",
                    encoding="utf-8")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "stages.train and stages.eval import no teacher or build module BROKEN" in result.stdout
    assert "stages.train.loop -> tide.models.teacher" in result.stdout
    assert "Contracts: 3 kept, 1 broken." in result.stdout
