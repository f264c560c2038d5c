"""Model code. Importing ``tide.models`` registers the custom model types with the transformers Auto
classes: ``a2d-qwen3`` (the student) and ``llada2_moe`` (teacher A)."""

from tide.models.a2d_qwen3 import register_a2d_qwen3
from tide.models.llada2_moe import register_llada2_moe

register_a2d_qwen3()
register_llada2_moe()

__all__ = ["register_a2d_qwen3", "register_llada2_moe"]
