"""Pipeline A chunk walker: hand-made cases and real Qwen vs Llama-3 / SentencePiece tokenizations."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tide.alignment.chunks import DROP_BYTE_MISMATCH, DROP_UNCLOSED, align_chunks, walk_chunks
from tide.alignment.spans import TokenizedText, tokenize_with_offsets
from tide.alignment.token_bytes import detect_byte_scheme, token_bytes_table


def _placed(pieces: list[bytes]) -> list[tuple[int, int, int]]:
    out, position = [], 0
    for index, piece in enumerate(pieces):
        out.append((index, position, position + len(piece)))
        position += len(piece)
    return out


def test_walk_hand_made_merges_until_common_boundary():
    student = [b"Hello", b" world", b"!"]
    teacher = [b"Hello ", b"world", b"!"]
    chunks, drops = walk_chunks(_placed(student), _placed(teacher), student, teacher, b"Hello world!")
    assert chunks == [(0, 2, 0, 2), (2, 3, 2, 3)]
    assert not drops


def test_walk_hand_made_minimal_segments():
    student = [b"ab", b"c", b"d", b"ef"]
    teacher = [b"a", b"bc", b"de", b"f"]
    chunks, _ = walk_chunks(_placed(student), _placed(teacher), student, teacher)
    assert chunks == [(0, 2, 0, 2), (2, 4, 2, 4)]


def test_walk_drops_mismatch_and_unclosed():
    student, teacher = [b"ab", b"cd"], [b"ab", b"xd"]
    chunks, drops = walk_chunks(_placed(student), _placed(teacher), student, teacher)
    assert chunks == [(0, 1, 0, 1)] and drops == {DROP_BYTE_MISMATCH: 1}
    # The teacher's second token is missing (left out of the walk): the chunk cannot close across the gap.
    s_iv = [(0, 0, 2), (1, 2, 4), (2, 4, 5)]
    t_iv = [(0, 0, 3), (2, 4, 5)]
    chunks, drops = walk_chunks(s_iv, t_iv, [b"ab", b"cd", b"e"], [b"abc", b"e"])
    assert chunks == [(2, 3, 1, 2)] and drops == {DROP_UNCLOSED: 1}


def _whole(tokenizer, text: str) -> TokenizedText:
    ids, offsets = tokenize_with_offsets(tokenizer, text)
    return TokenizedText(text=text, ids=ids, offsets=offsets, content_spans=np.array([[0, len(text)]]))


def _chunk_bytes(side: TokenizedText, table, start: int, end: int) -> bytes:
    return b"".join(table[int(i)] for i in side.ids[start:end])


def _check_tiling(student, teacher, s_table, t_table, chunks):
    """Every chunk is byte-identical on both sides, chunks are contiguous, tile the text, and are minimal."""
    s_parts, t_parts = [], []
    for c in range(len(chunks)):
        s0, s1 = int(chunks.student_start[c]), int(chunks.student_end[c])
        t0, t1 = int(chunks.teacher_start[c]), int(chunks.teacher_end[c])
        s_bytes, t_bytes = _chunk_bytes(student, s_table, s0, s1), _chunk_bytes(teacher, t_table, t0, t1)
        assert s_bytes == t_bytes
        s_parts.append(s_bytes)
        t_parts.append(t_bytes)
        if c + 1 < len(chunks):
            assert chunks.student_start[c + 1] == s1 and chunks.teacher_start[c + 1] == t1
        s_cuts = np.cumsum([len(s_table[int(i)]) for i in student.ids[s0:s1]])[:-1]
        t_cuts = np.cumsum([len(t_table[int(i)]) for i in teacher.ids[t0:t1]])[:-1]
        assert not set(s_cuts.tolist()) & set(t_cuts.tolist())  # minimal: no inner common boundary
    return b"".join(s_parts)


TEXTS = [
    "In 2024 there were 365 days and 8760 hours.",  # Qwen splits digits one by one, Llama-3 in threes
    "print(x .| y)\n\n    return value\n",  # leading spaces and newlines
    "café naïve Straße",
    "日本語 and Ελληνικά or русский язык",
    "emoji 🙂🚀👍🏽 done",
]


@pytest.mark.parametrize("text", TEXTS)
def test_real_tokenizers_tile_text(text, student_tokenizer, llama3_tokenizer):
    s_table, t_table = token_bytes_table(student_tokenizer), token_bytes_table(llama3_tokenizer)
    student, teacher = _whole(student_tokenizer, text), _whole(llama3_tokenizer, text)
    chunks = align_chunks(student, teacher, s_table, t_table)
    assert not chunks.drops
    assert chunks.student_start[0] == 0 and chunks.teacher_start[0] == 0
    assert chunks.student_end[-1] == len(student.ids) and chunks.teacher_end[-1] == len(teacher.ids)
    assert _check_tiling(student, teacher, s_table, t_table, chunks) == text.encode("utf-8")


def test_ascii_chunk_count_equals_common_boundaries(student_tokenizer, llama3_tokenizer):
    text = TEXTS[0] + " " + TEXTS[1]
    student, teacher = _whole(student_tokenizer, text), _whole(llama3_tokenizer, text)
    chunks = align_chunks(student, teacher, token_bytes_table(student_tokenizer), token_bytes_table(llama3_tokenizer))
    # ASCII: character offsets are byte offsets, so the common boundaries come from the offsets alone.
    common = set(student.offsets[:, 1].tolist()) & set(teacher.offsets[:, 1].tolist())
    assert len(chunks) == len(common)


def test_differently_split_words(student_tokenizer, llama3_tokenizer):
    s_table, t_table = token_bytes_table(student_tokenizer), token_bytes_table(llama3_tokenizer)
    for text, expected in [
        (" 2024", [b" ", b"202", b"4"]),  # Llama-3 groups digits in threes from the left
        (" \u65e5\u672c\u8a9e", [" \u65e5\u672c".encode(), "\u8a9e".encode()]),
    ]:
        student, teacher = _whole(student_tokenizer, text), _whole(llama3_tokenizer, text)
        chunks = align_chunks(student, teacher, s_table, t_table)
        got = [_chunk_bytes(student, s_table, a, b) for a, b in zip(chunks.student_start, chunks.student_end, strict=True)]
        assert got == expected
    # Qwen writes one token per digit: the "202" chunk is three student tokens against one teacher token.
    student, teacher = _whole(student_tokenizer, " 2024"), _whole(llama3_tokenizer, " 2024")
    chunks = align_chunks(student, teacher, s_table, t_table)
    s_sizes = (chunks.student_end - chunks.student_start).tolist()
    t_sizes = (chunks.teacher_end - chunks.teacher_start).tolist()
    sizes = list(zip(s_sizes, t_sizes, strict=True))
    assert sizes == [(1, 1), (3, 1), (1, 1)]


def _tiny_sentencepiece() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    merges = [
        ("\u2581", "t"), ("\u2581t", "h"), ("\u2581th", "e"), ("\u2581", "w"), ("\u2581w", "o"),
        ("\u2581wo", "r"), ("\u2581wor", "l"), ("\u2581worl", "d"), ("h", "e"), ("l", "l"), ("ll", "o"),
        ("c", "a"), ("ca", "f"), ("\u2581", "caf"),
    ]
    for piece in ["\u2581", *"abcdefhlnortw"] + [a + b for a, b in merges]:
        vocab.setdefault(piece, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    backend.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def test_sentencepiece_byte_fallback_against_qwen(student_tokenizer):
    sp = _tiny_sentencepiece()
    assert detect_byte_scheme(sp) == "sentencepiece"
    sp_table = token_bytes_table(sp)
    assert sp_table[sp.convert_tokens_to_ids("<0xC3>")] == b"\xc3"
    assert sp_table[sp.convert_tokens_to_ids("\u2581the")] == b" the"
    text = "hello the caf\u00e9 world \U0001f642!"
    student, teacher = _whole(student_tokenizer, text), _whole(sp, text)
    assert sp.convert_ids_to_tokens(teacher.ids[:1].tolist()) == ["\u2581"]  # prepended, not in the text
    s_table = token_bytes_table(student_tokenizer)
    chunks = align_chunks(student, teacher, s_table, sp_table)
    got = [_chunk_bytes(teacher, sp_table, a, b) for a, b in zip(chunks.teacher_start, chunks.teacher_end, strict=True)]
    assert got == [b"hello", b" the", " caf\u00e9".encode(), b" world", " \U0001f642".encode(), b"!"]
    assert chunks.teacher_start[0] == 1  # the prepended "▁" straddles the span start and is left out
    assert _check_tiling(student, teacher, s_table, sp_table, chunks) == text.encode("utf-8")


def test_sentencepiece_leading_space_token_excluded(student_tokenizer):
    sp = _tiny_sentencepiece()
    text = "the world"
    student, teacher = _whole(student_tokenizer, text), _whole(sp, text)
    chunks = align_chunks(student, teacher, token_bytes_table(student_tokenizer), token_bytes_table(sp))
    # "▁the" carries a space the content does not have: it is excluded, so "the" has no chunk.
    got = [_chunk_bytes(teacher, token_bytes_table(sp), a, b) for a, b in zip(chunks.teacher_start, chunks.teacher_end, strict=True)]
    assert got == [b" world"]


def test_chat_template_chunks_stay_inside_contents(student_tokenizer, llama3_tokenizer):
    from tide.alignment.spans import tokenize_chat

    messages = [
        {"role": "user", "content": "Sum 12 and 30, then say caf\u00e9."},
        {"role": "assistant", "content": "12 + 30 = 42\nCaf\u00e9 \U0001f642"},
    ]
    student, teacher = tokenize_chat(student_tokenizer, messages), tokenize_chat(llama3_tokenizer, messages)
    s_table, t_table = token_bytes_table(student_tokenizer), token_bytes_table(llama3_tokenizer)
    chunks = align_chunks(student, teacher, s_table, t_table)
    for m, message in enumerate(messages):
        rows = np.flatnonzero(chunks.span_index == m)
        joined = b"".join(
            _chunk_bytes(student, s_table, chunks.student_start[r], chunks.student_end[r]) for r in rows
        )
        assert joined == message["content"].encode("utf-8")
        a, b = student.content_spans[m]
        assert (student.offsets[chunks.student_start[rows], 0] >= a).all()
        assert (student.offsets[chunks.student_end[rows] - 1, 1] <= b).all()
    limited = align_chunks(student, teacher, s_table, t_table, student_limit=12, teacher_limit=20)
    assert (limited.student_end <= 12).all() and (limited.teacher_end <= 20).all()
    assert limited.drops["chunk_truncated"] == len(chunks) - len(limited)
