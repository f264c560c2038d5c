"""TIDE offline: the method (noise, targets, losses, alignment, models, sampler).

Importing the package registers the student's ``a2d-qwen3`` model type with the transformers Auto classes,
so ``import tide`` is all a trained student needs to load with stock ``AutoModelForCausalLM.from_pretrained``
(no remote code). Teacher model code is never imported here.
"""

from tide.models import a2d_qwen3 as _student_model_type  # noqa: F401  (registers the model type)
