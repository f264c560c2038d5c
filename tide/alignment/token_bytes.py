"""The exact bytes each token id stands for, for byte-level BPE and SentencePiece vocabularies.

The chunk walker (``chunks.py``) compares tokenizations byte by byte, so it needs, for every id, the bytes
the token contributes to the decoded text:

* **byte-level BPE** (GPT-2, Qwen, Llama-3): every byte is written as one printable unicode character
  (``Ġ`` = space, ``Ċ`` = newline, ...); a piece maps back to bytes through the inverse of that table.
* **SentencePiece** (Llama-2, Gemma, many others): ``▁`` (U+2581) is a space, ``<0xNN>`` pieces are raw
  bytes when the model uses byte fallback, every other piece is its UTF-8 text.

Added tokens (specials such as ``<|im_end|>``) contribute their literal content. The scheme is detected
from the backend tokenizer's JSON (decoder, pre-tokenizer, normaliser, model) and the table is built once
per tokenizer object and cached.
"""

from __future__ import annotations

import json
import re
import weakref
from functools import lru_cache
from typing import Any, Literal

ByteScheme = Literal["byte_level", "sentencepiece"]

SPIECE_SPACE = "\u2581"
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")

_TABLE_CACHE: weakref.WeakKeyDictionary[Any, tuple[bytes, ...]] = weakref.WeakKeyDictionary()


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table.

    Bytes that are printable Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves;
    the remaining 68 bytes are mapped, in increasing byte order, to U+0100, U+0101, ...
    """
    printable = set(range(ord("!"), ord("~") + 1))
    printable |= set(range(ord("\u00a1"), ord("\u00ac") + 1))
    printable |= set(range(ord("\u00ae"), ord("\u00ff") + 1))
    table: dict[int, str] = {}
    next_code = 256
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(next_code)
            next_code += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    """Inverse of :func:`byte_to_unicode`."""
    return {char: byte for byte, char in byte_to_unicode().items()}


def _component_types(node: Any) -> list[str]:
    """All ``type`` names in a tokenizer-JSON component, descending into ``Sequence`` members."""
    if not isinstance(node, dict):
        return []
    types = [str(node.get("type", ""))]
    for key in ("pretokenizers", "decoders", "normalizers", "processors"):
        for child in node.get(key, None) or []:
            types.extend(_component_types(child))
    return types


def _component_json(component: Any) -> Any:
    """JSON of one backend component (decoder, pre-tokenizer, normaliser), or None if absent."""
    if component is None:
        return None
    return json.loads(component.__getstate__())


def _backend(tokenizer: Any) -> Any:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no backend_tokenizer: byte tables need a fast "
            "(tokenizers-library) tokenizer"
        )
    return backend


def detect_byte_scheme(tokenizer: Any) -> ByteScheme:
    """Return ``"byte_level"`` or ``"sentencepiece"`` from the backend tokenizer's components (their JSON;
    the model's vocabulary is never serialised).

    Byte-level: a ``ByteLevel`` decoder or pre-tokenizer. SentencePiece: a ``Metaspace`` pre-tokenizer or
    decoder, a ``ByteFallback`` decoder, a normaliser that replaces spaces by ``▁``, or a model with
    ``byte_fallback``. Anything else raises ``ValueError`` naming the components found.
    """
    backend = _backend(tokenizer)
    decoder = _component_types(_component_json(backend.decoder))
    pre = _component_types(_component_json(backend.pre_tokenizer))
    if "ByteLevel" in decoder or "ByteLevel" in pre:
        return "byte_level"
    normalizer_text = json.dumps(_component_json(backend.normalizer))
    model = backend.model
    if (
        "Metaspace" in pre
        or "Metaspace" in decoder
        or "ByteFallback" in decoder
        or SPIECE_SPACE in normalizer_text
        or bool(getattr(model, "byte_fallback", False))
    ):
        return "sentencepiece"
    raise ValueError(
        f"cannot tell the byte scheme of tokenizer {type(tokenizer).__name__}: decoder {decoder}, "
        f"pre-tokenizer {pre}, model {type(model).__name__}; expected byte-level BPE or SentencePiece"
    )


def piece_to_bytes(piece: str, scheme: ByteScheme) -> bytes:
    """Bytes of one vocabulary piece (not an added token) under ``scheme``."""
    if scheme == "byte_level":
        inverse = unicode_to_byte()
        try:
            return bytes(inverse[char] for char in piece)
        except KeyError:
            # A piece outside the byte alphabet (rare hand-added vocabulary entries): its literal text.
            return piece.encode("utf-8")
    if scheme == "sentencepiece":
        match = _BYTE_PIECE.match(piece)
        if match:
            return bytes([int(match.group(1), 16)])
        return piece.replace(SPIECE_SPACE, " ").encode("utf-8")
    raise ValueError(f"unknown byte scheme {scheme!r}; expected 'byte_level' or 'sentencepiece'")


def _build_table(tokenizer: Any) -> tuple[bytes, ...]:
    scheme = detect_byte_scheme(tokenizer)
    size = len(tokenizer)
    added = {int(i): tok for i, tok in tokenizer.added_tokens_decoder.items()}
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    table: list[bytes] = []
    for token_id, piece in enumerate(pieces):
        if token_id in added:
            table.append(str(added[token_id].content).encode("utf-8"))
        elif piece is None:
            table.append(b"")
        else:
            table.append(piece_to_bytes(piece, scheme))
    return tuple(table)


def token_bytes_table(tokenizer: Any) -> tuple[bytes, ...]:
    """Bytes of every id ``0..len(tokenizer)-1`` (added tokens included), built once per tokenizer.

    Returns a tuple indexed by token id. Ids with no piece (holes in a vocabulary) map to ``b""``.
    """
    try:
        return _TABLE_CACHE[tokenizer]
    except (KeyError, TypeError):
        pass
    table = _build_table(tokenizer)
    try:
        _TABLE_CACHE[tokenizer] = table
    except TypeError:  # pragma: no cover - objects that refuse weak references are simply not cached
        pass
    return table
