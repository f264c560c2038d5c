"""Token alignment between student and teacher tokenizations of the same messages (docs/design.md#pipelines).

``spans`` locates message contents in chat-templated text; ``positions`` aligns a shared vocabulary
position to position (pipeline B); ``chunks`` with ``token_bytes`` aligns foreign tokenizations by
byte-exact chunks (pipeline A).
"""

from tide.alignment.chunks import ChunkTable, align_chunks, walk_chunks
from tide.alignment.positions import PositionAlignment, align_positions
from tide.alignment.spans import (
    ContentSpanError,
    TokenizedText,
    locate_content_spans,
    render_chat,
    token_byte_intervals,
    tokenize_chat,
    tokenize_with_offsets,
    tokens_in_span,
)
from tide.alignment.token_bytes import detect_byte_scheme, piece_to_bytes, token_bytes_table

__all__ = [
    "ChunkTable",
    "ContentSpanError",
    "PositionAlignment",
    "TokenizedText",
    "align_chunks",
    "align_positions",
    "detect_byte_scheme",
    "locate_content_spans",
    "piece_to_bytes",
    "render_chat",
    "token_byte_intervals",
    "token_bytes_table",
    "tokenize_chat",
    "tokenize_with_offsets",
    "tokens_in_span",
    "walk_chunks",
]
