"""The one place a configured device (``embedding.device``, ``teacher.device``) is resolved.

``auto`` means the first CUDA device when torch sees one, else Apple's MPS when present, else the
CPU; the answer is computed once per process. Other values (``cpu``, ``cuda:1``, ``mps``) pass through.
"""

from __future__ import annotations

import functools


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` / ``mps`` / ``cpu`` as torch sees it (``cpu`` without torch); other values unchanged."""
    return _auto_device() if device == "auto" else device


@functools.cache
def _auto_device() -> str:
    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the install
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"
