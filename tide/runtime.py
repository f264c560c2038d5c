"""Where and in what precision models run: one meaning of ``auto`` for devices, dtypes and mixed precision.

Every stage resolves its ``--device`` / ``--dtype`` / ``--mixed-precision`` choices here, so "auto" means
the same everywhere: the first CUDA device when one is visible, else the CPU; bf16 weights on CUDA and fp32
on the CPU; bf16 autocast where the GPU supports it. A device that is asked for but absent is refused with
a message instead of failing deep inside torch.
"""

from __future__ import annotations

import torch

DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DTYPE_CHOICES: tuple[str, ...] = ("auto", *DTYPE_NAMES)
MIXED_PRECISION_CHOICES: tuple[str, ...] = ("auto", "no", "bf16", "fp16")


def resolve_device(choice: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None/empty) → ``cuda`` when available, else ``cpu``; anything else as given.

    Raises ValueError when a CUDA device is requested on a machine without one (or past the device count).
    """
    if isinstance(choice, torch.device):
        device = choice
    elif choice in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(str(choice))
        except RuntimeError as exc:
            raise ValueError(f"device {choice!r} is not a device name (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(choice)!r} was asked for but CUDA is not available on this machine; "
                "use --device cpu (or auto)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(choice)!r} was asked for but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    return device


def default_dtype(device: torch.device | str | None) -> torch.dtype:
    """The runtime precision of model weights on ``device``: bf16 on CUDA, fp32 elsewhere."""
    return torch.bfloat16 if torch.device(device or "cpu").type == "cuda" else torch.float32


def resolve_dtype(choice: str | torch.dtype | None, device: torch.device | str | None) -> torch.dtype:
    """``auto`` (or None) → :func:`default_dtype` of ``device``; a name from :data:`DTYPE_NAMES` → that dtype."""
    if isinstance(choice, torch.dtype):
        return choice
    if choice in (None, "auto"):
        return default_dtype(device)
    if choice not in DTYPE_NAMES:
        raise ValueError(f"dtype {choice!r} is not one of {', '.join(DTYPE_CHOICES)}")
    return DTYPE_NAMES[choice]


def dtype_name(dtype: torch.dtype) -> str:
    """The name :func:`resolve_dtype` takes for ``dtype`` (``torch.bfloat16`` → ``"bfloat16"``)."""
    for name, value in DTYPE_NAMES.items():
        if value == dtype:
            return name
    raise ValueError(f"dtype {dtype} has no name among {list(DTYPE_NAMES)}")


def resolve_mixed_precision(choice: str, device: torch.device | str | None = None) -> str:
    """accelerate's ``mixed_precision``: ``auto`` → ``bf16`` on a CUDA device that supports it, else ``no``."""
    if choice not in MIXED_PRECISION_CHOICES:
        raise ValueError(f"mixed precision {choice!r} is not one of {', '.join(MIXED_PRECISION_CHOICES)}")
    if choice != "auto":
        return choice
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    return "bf16" if on_cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
