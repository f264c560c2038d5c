"""The dataset card (``README.md``) of a cache: the Hub's YAML header and a description from the manifest.

The header's ``configs`` entry lists every shard of the manifest as the ``train`` split's data files, so
``datasets.load_dataset(<cache directory or Hub repo>)`` reads the shards and nothing else (not the manifest,
the build settings or the journal), and the Hub's viewer shows the rows. The body describes what a row is,
the teacher, the student side, the targets (k and their encoding, whatever the format version calls them),
the noise, every column with its Arrow type, and every shard with its size and SHA-256.

A card is written with every manifest (just before it). A ``README.md`` that this module did not write (no
:data:`CARD_MARKER`) is left alone, with a warning: a card someone edited by hand is theirs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import yaml

from cache_schema.manifest import DATA_DIR, Manifest
from cache_schema.store import Store

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
CARD_MARKER = "<!-- tide-cache dataset card: generated from manifest.json by every build; edits are replaced -->"
SPLIT = "train"

# What the columns mean; a pass's columns (``plain_*``, ``compdemo_*``) are described by their prefix.
COLUMN_MEANINGS = {
    "sample_id": "provenance, `<source>:<row index>`",
    "sample_key": "content hash of the conversation; the key of its noise",
    "replica": "noise replica r in [0, noise.replicas)",
    "t": "the drawn timestep, in (0, 1]",
    "input_ids": "student clean token ids x0 (EOS-padded to a multiple of the block size)",
    "maskable": "per student position: the label is trained (response tokens and EOS padding)",
    "masked_positions": "student positions masked in the plain noise",
    "teacher_input_ids": "teacher clean token ids, in the teacher's chat template",
    "compdemo_group": "per target item: CompDemo group (0 = A, 1 = B); empty without a compdemo pass",
    "target_positions": "student positions that carry vocabulary targets",
    "target_teacher_positions": "the aligned teacher positions",
    "chunk_student_start": "student token span of each aligned chunk (start)",
    "chunk_student_end": "student token span of each aligned chunk (end, exclusive)",
    "chunk_teacher_start": "teacher token span of each aligned chunk (start)",
    "chunk_teacher_end": "teacher token span of each aligned chunk (end, exclusive)",
    "chunk_masked": "the chunk is masked in the plain noise",
    "chunk_in_prompt": "the chunk lies in a prompt message",
}
PASS_MEANINGS = {"plain": "teacher targets of the plain pass (every masked position masked at once)",
                 "compdemo": "teacher targets of the CompDemo passes (each group revealed in turn)"}


def _meaning(column: str) -> str:
    if column in COLUMN_MEANINGS:
        return COLUMN_MEANINGS[column]
    prefix, _, rest = column.partition("_")
    if prefix in PASS_MEANINGS:
        return f"{PASS_MEANINGS[prefix]}: `{rest}`"
    return "see docs/cache-format.md"


def _flat(section: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) rows of a manifest section; long lists (an id table) are summarised."""
    rows: list[tuple[str, Any]] = []
    for key, value in section.items():
        if isinstance(value, Mapping):
            rows += _flat(value, f"{prefix}{key}.")
        elif isinstance(value, list) and len(value) > 16:
            rows.append((f"{prefix}{key}", f"{len(value)} values: {value[:4]} ..."))
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    def cell(value: Any) -> str:
        return ("-" if value is None else str(value)).replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)]


def card_header(manifest: Manifest) -> dict[str, Any]:
    """The YAML header: name, tags and the one config whose train split is every listed shard."""
    return {
        "pretty_name": f"TIDE logits cache ({manifest.pipeline}, teacher {manifest.teacher.name})",
        "tags": ["tide-cache", "knowledge-distillation", "diffusion-language-model", "logits-cache"],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": SPLIT, "path": [s.file for s in manifest.shards]}]}],
    }


def card_text(manifest: Manifest) -> str:
    """The whole ``README.md`` of a cache with this manifest."""
    data = manifest.to_dict()
    header = yaml.safe_dump(card_header(manifest), sort_keys=False, allow_unicode=True, width=1000)
    target_rows = _flat(data["targets"])
    lines = [
        "---", header.rstrip("\n"), "---", CARD_MARKER, "",
        f"# TIDE logits cache: {manifest.teacher.name} → student, pipeline `{manifest.pipeline}`", "",
        f"A logits cache written by TIDE offline's `tide-cache build` (format `tide-cache` v{manifest.format_version}): "
        f"{manifest.num_rows} rows in {len(manifest.shards)} zstd Parquet shards under `{DATA_DIR}/`, "
        f"{manifest.num_bytes} bytes, {manifest.num_targets} target items. One row is one (conversation, noise "
        "replica): the student and teacher token ids, one draw of the diffusion noise (timestep, masked "
        "positions, CompDemo split) and the teacher's targets for that draw. `manifest.json` describes the "
        "cache; `build_config.json` and `progress/` are the build's journal.", "",
        "## Reading it", "",
        "```python",
        "from datasets import load_dataset          # this directory or its Hub repository",
        f"rows = load_dataset(\"<this directory or repo>\", split=\"{SPLIT}\")",
        "import pyarrow.dataset as ds                # or pandas.read_parquet / polars on the folder",
        f"table = ds.dataset(\"<this directory>/{DATA_DIR}\").to_table()",
        "```", "",
        f"duckdb: `SELECT * FROM '<this directory>/{DATA_DIR}/*.parquet'`. Train a student on it with "
        "`tide-train --cache <this directory or its URL> ...`; check it with `tide-cache validate`.", "",
        "## Teacher", "", *_table(("field", "value"), _flat(data["teacher"])), "",
        "## Student side", "", *_table(("field", "value"), _flat(data["student"])), "",
        "## Targets", "",
        "Passes, temperatures and the top-k policy (`k`) of the stored teacher targets.", "",
        *_table(("field", "value"), target_rows), "",
        "## Noise", "", *_table(("field", "value"), _flat(data["noise"])), "",
        "## Columns", "",
        *_table(("column", "Arrow type", "meaning"),
                [(f"`{f.name}`", f"`{f.type}`", _meaning(f.name)) for f in manifest.arrow_schema()]), "",
        "## Shards", "",
        *_table(("file", "rows", "bytes", "target items", "sha256"),
                [(f"`{s.file}`", s.rows, s.bytes, s.num_targets, f"`{s.sha256}`") for s in manifest.shards]), "",
    ]
    return "\n".join(lines)


def is_generated(text: str) -> bool:
    """Whether a ``README.md`` is a card this module wrote."""
    return CARD_MARKER in text


def card_data_files(text: str) -> list[str] | None:
    """The data files a card's header lists for the train split (None when the header has none)."""
    if not text.startswith("---\n"):
        return None
    head = text[4:].split("\n---\n", 1)[0]
    try:
        header = yaml.safe_load(head)
    except yaml.YAMLError:
        return None
    try:
        files = [entry["path"] for config in header["configs"] for entry in config["data_files"]
                 if entry.get("split") == SPLIT]
    except (KeyError, TypeError):
        return None
    return [name for group in files for name in ([group] if isinstance(group, str) else group)]


def write_card(store: Store, manifest: Manifest) -> bool:
    """Write the card of ``manifest`` into the cache at ``store``; False (and a warning) when a README.md
    that is not a generated card is there already."""
    if store.is_file(CARD_FILE) and not is_generated(store.read_bytes(CARD_FILE).decode("utf-8", "replace")):
        logger.warning("%s is not a tide-cache dataset card; leaving it as it is (delete it to have the card "
                       "written)", store.display(CARD_FILE))
        return False
    store.write_bytes(CARD_FILE, card_text(manifest).encode("utf-8"))
    return True
