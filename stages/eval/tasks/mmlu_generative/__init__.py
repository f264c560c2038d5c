"""The generative MMLU task YAMLs (the original fork's two definitions) and their category hooks."""
