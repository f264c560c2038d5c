"""The project's task YAMLs (mmlu_generative_dream, hellaswag_gen) and the stock task names."""

from __future__ import annotations

import pytest
import yaml
from datasets import Dataset
from lm_eval.filters.extraction import RegexFilter

from stages.eval import TASKS_DIR
from stages.eval.protocol import PAPER_TASKS
from stages.eval.runner import build_task_manager
from stages.eval.tasks import hellaswag_gen_utils


def test_project_tasks_are_indexed_through_include_path():
    manager = build_task_manager(include_defaults=False)
    assert {"mmlu_generative_dream", "hellaswag_gen"} <= set(manager.all_tasks)


@pytest.mark.parametrize("name", ["mmlu_generative_dream.yaml", "hellaswag_gen.yaml"])
def test_letter_extraction(name):
    text = (TASKS_DIR / name).read_text().replace("!function", "")
    config = yaml.safe_load(text)
    assert config["output_type"] == "generate_until"
    assert config["generation_kwargs"]["max_gen_toks"] == 3
    regex = config["filter_list"][0]["filter"][0]
    extract = RegexFilter(regex_pattern=regex["regex_pattern"], fallback=regex["fallback"])
    responses = [[" B"], ["C. Paris"], ["The answer"], ["BD"], ["(D)"]]
    assert [r[0] for r in extract.apply(responses, [{}] * 5)] == ["B", "C", "[invalid]", "[invalid]", "D"]


def test_hellaswag_documents():
    doc = {
        "activity_label": "Baking cookies",
        "ctx_a": "A woman puts dough on a tray.",
        "ctx_b": "she",
        "endings": ["bakes it [header] for ten minutes.", "eats  the tray.", "x [title] y", "runs."],
        "label": "0",
    }
    prepared = hellaswag_gen_utils.process_docs(Dataset.from_list([doc]))[0]
    assert prepared["context"] == "Baking cookies: A woman puts dough on a tray. She"
    assert prepared["endings"] == ["bakes it for ten minutes.", "eats the tray.", "x. y", "runs."]
    assert prepared["label"] == 0


@pytest.mark.slow
def test_stock_paper_tasks_exist_in_installed_lm_eval():
    names = set(build_task_manager().all_tasks)
    assert {s.task for s in PAPER_TASKS} <= names
    assert "bbh_cot_fewshot_boolean_expressions" in names
