"""Model code, by role.

Student: ``a2d_qwen3`` (the ``a2d-qwen3`` model type), ``student`` (loading and the block-diffusion
forward). Teachers: ``teacher`` (loading and the runner), ``llada2_moe`` (the ``llada2_moe`` model type),
``wedlm`` (WeDLM checkpoints as Qwen3). Both: ``loading`` (a checkpoint's config.json, from_pretrained
arguments). Each model module registers its own type with the transformers Auto classes when imported, and
this package imports none of them, so loading a student never loads teacher code.
"""
