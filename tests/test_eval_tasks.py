"""The project's task YAMLs, run through lm-eval's own evaluator on local data with hand-made generations:
``mmlu_generative_dream`` (and its ``mmlu_generative_llada`` option) and ``hellaswag_gen`` score exactly as
the original lm-eval fork's definitions do (expected scores worked out by hand from the fork's filters and
metric options), with the fork's prompts, stop strings and size-weighted category aggregation."""

from __future__ import annotations

import json
import shutil

import pytest
from datasets import Dataset
from lm_eval import simple_evaluate
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager

from stages.eval import TASKS_DIR
from stages.eval.protocol import PAPER_TASKS, TASKS_BY_NAME
from stages.eval.runner import build_task_manager
from stages.eval.tasks import hellaswag_gen_utils
from stages.eval.tasks.mmlu_generative.mmlu_categories import CATEGORIES

# (subject, gold letter, generation, score under the fork's generative_dream filter ^([A-Z]).* → take_first,
# exact match ignoring case and punctuation). The filter keeps the first character when it is A-Z.
MMLU_CASES = [
    ("abstract_algebra", "B", "B", 1),
    ("abstract_algebra", "B", "b", 0),  # lower case does not match [A-Z]; ignore_case acts after extraction
    ("abstract_algebra", "B", "B.", 1),
    ("anatomy", "C", " (C)", 0),  # the first character is a space
    ("anatomy", "B", " B", 0),
    ("anatomy", "C", "(C)", 0),
    ("philosophy", "B", "The answer is B", 0),  # extracts "T"
    ("philosophy", "B", "Answer: B", 0),  # extracts "A" ...
    ("philosophy", "A", "Answer: A", 1),  # ... which is right when the gold letter is A
    ("philosophy", "B", "B) Paris", 1),
    ("sociology", "B", "Bob", 1),
    ("sociology", "B", "E", 0),
    ("virology", "B", "", 0),
]
# Under the fork's mmlu/generative filter (first line, stripped, case and punctuation ignored).
LLADA_SCORES = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
# (gold label, generation, score under hellaswag_gen: lowercase → first of [abcd] → take_first, exact match).
HELLASWAG_CASES = [
    (1, "B", 1), (1, "b", 1), (1, "B.", 1), (1, " (B)", 1),
    (1, "The answer is B", 0),  # the "a" of "answer" comes first
    (0, "Answer: A", 1),  # right for the wrong reason
    (1, "Ending B", 0),  # the "d" of "ending"
    (1, "option b", 1), (1, "bd", 1), (1, "D", 0), (2, "C", 1), (1, "xyz", 0), (1, "", 0),
]


class ScriptedLM(LM):
    """Answers each request with the generation scripted for the document its context contains."""

    def __init__(self, answers: dict[str, str]) -> None:
        super().__init__()
        self.answers = answers
        self.requests = []

    def generate_until(self, requests, disable_tqdm: bool = False):
        self.requests += [r.args for r in requests]
        return [next(a for key, a in self.answers.items() if key in r.args[0]) for r in requests]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("generative tasks only")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("generative tasks only")


def _local_tasks(tmp_path):
    """The project's task directory with its Hugging Face datasets replaced by local JSONL files."""
    tasks = shutil.copytree(TASKS_DIR, tmp_path / "tasks")
    mmlu_rows = [{"question": f"  Question {i}?\n", "subject": s, "choices": ["w", "x", "y", "z"],
                  "answer": "ABCD".index(g)} for i, (s, g, _, _) in enumerate(MMLU_CASES)]
    dev = [{"question": "Dev?", "subject": s, "choices": ["1", "2", "3", "4"], "answer": 0}
           for s in sorted({c[0] for c in MMLU_CASES})]
    hella = [{"activity_label": "Topic", "ctx_a": f"Story {i}.", "ctx_b": "then", "endings": ["p", "q", "r", "s"],
              "label": str(g)} for i, (g, _, _) in enumerate(HELLASWAG_CASES)]
    files = {}
    for name, rows in {"mmlu_test": mmlu_rows, "mmlu_dev": dev, "hella": hella}.items():
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    local_mmlu = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {files['mmlu_test']}\n"
                  f"    dev: {files['mmlu_dev']}\n")
    for template in ("_dream_template.yaml", "_llada_template.yaml"):
        path = tasks / "mmlu_generative" / template
        text = path.read_text()
        assert "dataset_path: cais/mmlu\ndataset_name: all\n" in text
        path.write_text(text.replace("dataset_path: cais/mmlu\ndataset_name: all\n", local_mmlu))
    path = tasks / "hellaswag_gen.yaml"
    local_hella = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    train: {files['hella']}\n"
                   f"    validation: {files['hella']}\n")
    path.write_text(path.read_text().replace("dataset_path: Rowan/hellaswag\n", local_hella))
    return TaskManager(include_path=[str(tasks)], include_defaults=False)


def _evaluate(manager, task, answers):
    lm = ScriptedLM(answers)
    results = simple_evaluate(model=lm, tasks=[task], task_manager=manager, num_fewshot=0, log_samples=True,
                              bootstrap_iters=0)
    return results, lm


def test_mmlu_generative_dream_scores_as_the_fork_with_size_weighted_categories(tmp_path):
    manager = _local_tasks(tmp_path)
    answers = {f"Question {i}?\nA. w": gen for i, (_, _, gen, _) in enumerate(MMLU_CASES)}
    results, lm = _evaluate(manager, "mmlu_generative_dream", answers)
    scores = results["results"]
    assert scores["mmlu_generative_dream"]["exact_match,get_response"] == pytest.approx(5 / 13)  # weighted
    expected = {"stem": 2 / 6, "humanities": 2 / 4, "social_sciences": 1 / 2, "other": 0 / 1}
    for category, value in expected.items():
        assert scores[f"mmlu_generative_dream_{category}"]["exact_match,get_response"] == pytest.approx(value)
    # (an unweighted mean of the four categories would be 1/3)
    samples = sorted(results["samples"]["mmlu_generative_dream_stem"], key=lambda s: s["doc_id"])
    assert [s["filtered_resps"][0] for s in samples] == ["B", "[invalid]", "B", "[invalid]", "[invalid]",
                                                         "[invalid]"]
    context, gen_kwargs = lm.requests[0]
    assert context == ("The following are multiple choice questions (with answers) about abstract algebra.\n\n"
                       "Question 0?\nA. w\nB. x\nC. y\nD. z\nAnswer:")
    assert gen_kwargs["until"] == ["</s>", "\n"]


def test_mmlu_generative_llada_option_scores_the_first_line(tmp_path):
    manager = _local_tasks(tmp_path)
    answers = {f"Q:   Question {i}?\n\nA. w": gen for i, (_, _, gen, _) in enumerate(MMLU_CASES)}
    results, lm = _evaluate(manager, "mmlu_generative_llada", answers)
    assert results["results"]["mmlu_generative_llada"]["exact_match,get_response"] == pytest.approx(6 / 13)
    assert sum(LLADA_SCORES) == 6
    assert lm.requests[0][0].endswith("There is a single choice question about abstract_algebra. Answer the "
                                      "question by replying A, B, C or D.\nQ:   Question 0?\n\nA. w\nB. x\nC. y"
                                      "\nD. z\nA:\n")


def test_hellaswag_gen_scores_as_the_fork(tmp_path):
    manager = _local_tasks(tmp_path)
    answers = {f"Topic: Story {i}. Then\n": gen for i, (_, gen, _) in enumerate(HELLASWAG_CASES)}
    results, lm = _evaluate(manager, "hellaswag_gen", answers)
    assert results["results"]["hellaswag_gen"]["exact_match,first_option_filter"] == pytest.approx(8 / 13)
    assert sum(c[2] for c in HELLASWAG_CASES) == 8
    samples = sorted(results["samples"]["hellaswag_gen"], key=lambda s: s["doc_id"])
    assert [s["target"] for s in samples[:3]] == ["b", "b", "b"]
    assert [s["filtered_resps"][0] for s in samples[4:7]] == ["a", "a", "d"]
    context, gen_kwargs = lm.requests[0]
    assert context == ("Topic: Story 0. Then\nQuestion: Which ending makes the most sense?\nA. p\nB. q\nC. r\n"
                       "D. s\nYou may choose from 'A', 'B', 'C', 'D'.\nAnswer:\n")
    assert gen_kwargs["until"] == ["\n", "</s>", "<|im_end|>"] and gen_kwargs["max_new_tokens"] == 3


def test_hellaswag_documents_keep_the_forks_cleaning_quirks():
    doc = {
        "activity_label": "Baking cookies",
        "ctx_a": "A woman  puts dough [header] on a tray.",
        "ctx_b": "SHE then",
        "endings": ["bakes it [title] for ten   minutes.", "eats the tray.", "runs."],
        "label": "2",
    }
    prepared = hellaswag_gen_utils.process_docs(Dataset.from_list([doc]))[0]
    # capitalize() lower-cases the rest; "[header]" leaves two spaces, one replace pass makes them one
    assert prepared["ctx"] == "Baking cookies: A woman puts dough on a tray. She then"
    # " [title]" becomes ". ", and three spaces become two (a single pass of "  " → " ")
    assert prepared["choices"] == ["bakes it. for ten  minutes.", "eats the tray.", "runs."]
    assert (prepared["A"], prepared["D"], prepared["label"]) == ("bakes it. for ten  minutes.", "", 2)


def test_categories_cover_the_57_subjects():
    subjects = [s for members in CATEGORIES.values() for s in members]
    assert len(subjects) == len(set(subjects)) == 57
    assert {k: len(v) for k, v in CATEGORIES.items()} == {"stem": 19, "humanities": 13, "social_sciences": 12,
                                                         "other": 13}


def test_project_tasks_are_indexed_and_in_the_protocol():
    manager = build_task_manager(include_defaults=False)
    assert {"mmlu_generative_dream", "mmlu_generative_llada", "hellaswag_gen"} <= set(manager.all_tasks)
    assert TASKS_BY_NAME["mmlu_generative_dream"].metric == "exact_match,get_response"
    assert TASKS_BY_NAME["hellaswag_gen"].metric == "exact_match,first_option_filter"
    assert TASKS_BY_NAME["mmlu_pro"].gen_kwargs == {"until": ["</s>", "Q:", "<|im_end|>", "Question:"]}


@pytest.mark.slow
def test_stock_paper_tasks_exist_in_installed_lm_eval():
    names = set(build_task_manager().all_tasks)
    assert {s.task for s in PAPER_TASKS} <= names
    assert "bbh_cot_fewshot_boolean_expressions" in names
