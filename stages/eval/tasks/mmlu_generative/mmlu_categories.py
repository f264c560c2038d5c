"""The 57 MMLU subjects by category, and one ``process_docs`` hook per category.

The categories are lm-eval's (its per-subject MMLU tasks carry them as tags, and the original fork's
``mmlu_generative_dream`` group aggregates over them). Each category task reads the ``all`` configuration of
``cais/mmlu`` and keeps its own subjects, so a category's size is the number of its test questions and the
group's size-weighted mean is the mean over all 14,042 questions.
"""

from __future__ import annotations

CATEGORIES: dict[str, tuple[str, ...]] = {
    "stem": (
        "abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
        "college_computer_science", "college_mathematics", "college_physics", "computer_security",
        "conceptual_physics", "electrical_engineering", "elementary_mathematics", "high_school_biology",
        "high_school_chemistry", "high_school_computer_science", "high_school_mathematics",
        "high_school_physics", "high_school_statistics", "machine_learning",
    ),
    "humanities": (
        "formal_logic", "high_school_european_history", "high_school_us_history", "high_school_world_history",
        "international_law", "jurisprudence", "logical_fallacies", "moral_disputes", "moral_scenarios",
        "philosophy", "prehistory", "professional_law", "world_religions",
    ),
    "social_sciences": (
        "econometrics", "high_school_geography", "high_school_government_and_politics",
        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology",
        "human_sexuality", "professional_psychology", "public_relations", "security_studies", "sociology",
        "us_foreign_policy",
    ),
    "other": (
        "business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging",
        "management", "marketing", "medical_genetics", "miscellaneous", "nutrition", "professional_accounting",
        "professional_medicine", "virology",
    ),
}


def _keep(dataset, category: str):
    subjects = frozenset(CATEGORIES[category])
    return dataset.filter(lambda doc: doc["subject"] in subjects)


def stem(dataset):
    return _keep(dataset, "stem")


def humanities(dataset):
    return _keep(dataset, "humanities")


def social_sciences(dataset):
    return _keep(dataset, "social_sciences")


def other(dataset):
    return _keep(dataset, "other")
