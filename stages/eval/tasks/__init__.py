"""Task YAMLs written for this project, loaded through lm-eval's ``TaskManager(include_path=...)``."""
