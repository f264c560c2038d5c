"""Two byte-level BPE tokenizers trained here on the training split (``tokenizers`` library).

* ``small`` (default 4,096 ids): the student's and the shared-vocabulary teacher's. Ids
  ``0..shared_vocab_size-1`` are the BPE vocabulary plus ``<|endoftext|>``, ``<|im_start|>``,
  ``<|im_end|>``; ``<|mask|>`` is the last id, outside the shared slice (as in the real Qwen3 / WeDLM
  pair). The student renders ChatML; the shared teacher gets the same vocabulary with a ChatML template
  that adds a default system turn, so position alignment is exercised as in the real pipeline.
* ``large`` (default 6,144 ids): the cross-tokenizer teacher's, with Llama-3 style special tokens and
  template. Different merges mean different token boundaries, so chunk alignment is exercised for real.

Both are saved in the ``save_pretrained`` layout and loaded with ``AutoTokenizer``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from tide.testing.tokenizers import CHATML_TEMPLATE, CHATML_WITH_SYSTEM_TEMPLATE, LLAMA3_TEMPLATE, MASK_TOKEN

logger = logging.getLogger(__name__)

CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


def _train_backend(texts: Iterable[str], vocab_size: int, specials: tuple[str, ...]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,  # the mask token is added afterwards, as the last id
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return backend


def train_bpe_tokenizer(
    texts: list[str],
    output_dir: str | os.PathLike,
    *,
    vocab_size: int,
    kind: str,
) -> PreTrainedTokenizerBase:
    """Train (once; reloaded if ``output_dir`` holds one) a byte-level BPE of ``vocab_size`` ids.

    ``kind``: ``"chatml"`` (student, specials ``<|endoftext|>``/``<|im_start|>``/``<|im_end|>``, EOS
    ``<|im_end|>``) or ``"llama3"`` (cross teacher, EOS ``<|eot_id|>``). ``<|mask|>`` is the last id.
    """
    if kind not in ("chatml", "llama3"):
        raise ValueError(f"kind={kind!r}: expected 'chatml' or 'llama3'")
    if vocab_size < 512:
        raise ValueError(f"vocab_size={vocab_size}: a byte-level BPE needs at least 512 ids (256 bytes + merges)")
    if not texts:
        raise ValueError("texts is empty: nothing to train the tokenizer on")
    output_dir = Path(output_dir)
    if (output_dir / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(output_dir))
    specials = CHATML_SPECIALS if kind == "chatml" else LLAMA3_SPECIALS
    backend = _train_backend(texts, vocab_size, specials)
    if kind == "chatml":
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
        )
        tokenizer.chat_template = CHATML_TEMPLATE
    else:
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
            pad_token="<|end_of_text|>",
        )
        tokenizer.chat_template = LLAMA3_TEMPLATE
    tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    if tokenizer.mask_token_id != len(tokenizer) - 1:
        raise RuntimeError(f"{output_dir}: the mask token got id {tokenizer.mask_token_id}, expected the last id")
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(output_dir))
    logger.info("trained %s BPE tokenizer with %d ids -> %s", kind, len(tokenizer), output_dir)
    return AutoTokenizer.from_pretrained(str(output_dir))


def shared_teacher_tokenizer(student_dir: str | os.PathLike, output_dir: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The student's vocabulary under a different chat template (a default system turn), as WeDLM's."""
    output_dir = Path(output_dir)
    if not (output_dir / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(student_dir))
        tokenizer.chat_template = CHATML_WITH_SYSTEM_TEMPLATE
        output_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(output_dir))
    return AutoTokenizer.from_pretrained(str(output_dir))


def shared_vocab_size(tokenizer: PreTrainedTokenizerBase) -> int:
    """Ids shared between the student and the shared teacher: everything below the mask id."""
    if tokenizer.mask_token_id is None:
        raise ValueError("tokenizer has no mask token")
    return int(tokenizer.mask_token_id)
