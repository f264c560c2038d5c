"""The ``model_type`` names of the project's checkpoints and what each means, importable without torch.

A checkpoint's ``config.json`` names its type; the build reads it to pick the pipeline before any model
code is loaded, and the model modules register the same names with the transformers Auto classes.
"""

from __future__ import annotations

A2D_QWEN3_MODEL_TYPE = "a2d-qwen3"  # the block-diffusion student (Qwen3 weights)
LLADA2_MODEL_TYPE = "llada2_moe"  # teacher A: LLaDA2.0-mini, our own implementation
WEDLM_MODEL_TYPE = "wedlm"  # teacher B: WeDLM-8B, Qwen3 weights under its own config

# Teacher family of each teacher model type (stock Qwen3 configs are WeDLM checkpoints loaded as Qwen3).
TEACHER_FAMILIES = {LLADA2_MODEL_TYPE: "llada2", WEDLM_MODEL_TYPE: "wedlm", "qwen3": "wedlm"}
