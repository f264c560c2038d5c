"""Document preparation for the project's ``hellaswag_gen`` task."""

from __future__ import annotations

import re

_BRACKETED = re.compile(r"\[[^\]]*\]")


def clean(text: str) -> str:
    """Strip WikiHow artifacts: `` [title]`` becomes a sentence break, other ``[...]`` tags go away."""
    text = text.strip().replace(" [title]", ". ")
    text = _BRACKETED.sub("", text)
    return re.sub(r" {2,}", " ", text).strip()


def prepare(doc: dict) -> dict:
    """Context (activity label, ctx_a and capitalised ctx_b), cleaned endings and the integer label."""
    context = f"{doc['activity_label']}: {doc['ctx_a']} {doc['ctx_b'].capitalize()}"
    return {
        "context": clean(context),
        "endings": [clean(ending) for ending in doc["endings"]],
        "label": int(doc["label"]),
    }


def process_docs(dataset):
    """``process_docs`` hook: map every document through ``prepare``."""
    return dataset.map(prepare)
