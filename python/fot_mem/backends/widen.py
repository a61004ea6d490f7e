"""Chunk views as the Python backends' float32 (faiss and hnswlib take float32 only)."""

from __future__ import annotations

import numpy as np


def as_f32(view: np.ndarray) -> np.ndarray:
    """`view` as float32: zero-copy when it already is; uint16 holds bfloat16 bits."""
    if view.dtype == np.float32:
        return view  # zero-copy: faiss reads the mapped chunk directly
    if view.dtype == np.uint16:  # bfloat16 bits
        return (view.astype(np.uint32) << 16).view(np.float32)
    return view.astype(np.float32)
