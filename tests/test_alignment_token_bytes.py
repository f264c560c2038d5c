"""Per-id byte tables: GPT-2 byte alphabet, byte-level BPE and SentencePiece vocabularies."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tide.alignment.token_bytes import (
    byte_to_unicode,
    detect_byte_scheme,
    piece_to_bytes,
    token_bytes_table,
    unicode_to_byte,
)

TEXTS = [
    "def f(x):\n    return x * 2  # double\n",
    "café naïve Straße 日本語 русский 🙂🚀👍🏽",
    "\n\n\t  mixed   whitespace \r\n end",
]


def test_gpt2_byte_alphabet():
    table = byte_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "\u0120" and table[ord("\n")] == "\u010a"
    assert all(unicode_to_byte()[char] == byte for byte, char in table.items())


@pytest.mark.parametrize("name", ["student_tokenizer", "llama3_tokenizer"])
def test_byte_level_tables_reproduce_text(name, request):
    tokenizer = request.getfixturevalue(name)
    assert detect_byte_scheme(tokenizer) == "byte_level"
    table = token_bytes_table(tokenizer)
    assert len(table) == len(tokenizer)
    assert token_bytes_table(tokenizer) is table  # built once, cached
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert b"".join(table[i] for i in ids) == text.encode("utf-8")
    # Independent check against the tokenizer's own decoder on whole-character tokens.
    for token_id in range(0, 120_000, 997):
        data = table[token_id]
        try:
            expected = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        assert tokenizer.decode([token_id]) == expected


def test_special_tokens_are_their_text(student_tokenizer, llama3_tokenizer):
    assert token_bytes_table(student_tokenizer)[student_tokenizer.convert_tokens_to_ids("<|im_end|>")] == b"<|im_end|>"
    assert token_bytes_table(llama3_tokenizer)[llama3_tokenizer.convert_tokens_to_ids("<|eot_id|>")] == b"<|eot_id|>"


def test_sentencepiece_pieces():
    assert piece_to_bytes("\u2581the", "sentencepiece") == b" the"
    assert piece_to_bytes("<0xC3>", "sentencepiece") == b"\xc3"
    assert piece_to_bytes("caf\u00e9", "sentencepiece") == "café".encode()
    assert piece_to_bytes("\u0120the", "byte_level") == b" the"
    with pytest.raises(ValueError, match="unknown byte scheme"):
        piece_to_bytes("x", "wordpiece")


def test_unknown_scheme_is_an_error():
    backend = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    with pytest.raises(ValueError, match="cannot tell the byte scheme"):
        detect_byte_scheme(tokenizer)
