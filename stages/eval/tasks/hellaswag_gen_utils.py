"""Document preparation for ``hellaswag_gen``, as the original lm-eval fork prepares it.

The context is the activity label, ``ctx_a`` and ``ctx_b`` with its first letter capitalised (Python's
``str.capitalize``, which also lower-cases the rest). Context and endings are cleaned like lm-eval's
HellaSwag: stripped, `` [title]`` turned into a sentence break, every ``[...]`` tag removed and double
spaces replaced once (a single pass, so three spaces become two; no strip afterwards) — those quirks are
part of the prompt the paper's scores were measured on. Fewer than four endings are padded with "".
"""

from __future__ import annotations

import re

_TAG = re.compile(r"\[.*?\]")


def clean(text: str) -> str:
    """The fork's ``preprocess``: strip, `` [title]`` → ``". "``, drop ``[...]``, one pass of ``"  "`` → ``" "``."""
    text = text.strip().replace(" [title]", ". ")
    return _TAG.sub("", text).replace("  ", " ")


def prepare(doc: dict) -> dict:
    """Fields ``ctx``, ``choices``, ``A``-``D`` and the integer ``label`` of one document."""
    context = clean(f"{doc['activity_label']}: {doc['ctx_a']} {doc['ctx_b'].capitalize()}")
    endings = [clean(ending) for ending in doc["endings"]]
    padded = endings + [""] * (4 - len(endings))
    return {"ctx": context, "choices": endings, **dict(zip("ABCD", padded, strict=False)), "label": int(doc["label"])}


def process_docs(dataset):
    """``process_docs`` hook: map every document through ``prepare``."""
    return dataset.map(prepare)
