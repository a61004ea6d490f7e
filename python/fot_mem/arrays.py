"""The one conversion path from user arrays (numpy, torch, ml_dtypes, nested lists) to what the
core takes: C-contiguous numpy arrays of float32, float16, or uint16 holding bfloat16 bits."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .exceptions import DtypeError, InvalidValueError, ShapeError, TokenIndexError

_FLOATS = (np.dtype(np.float32), np.dtype(np.float16))


def _torch_tensor(x: Any) -> Any | None:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return torch
    return None


def as_float_array(x: Any, what: str) -> np.ndarray:
    """Returns `x` as a contiguous numpy array the core accepts, without copying when it can.

    bfloat16 (torch or ml_dtypes) travels as its uint16 bit pattern; float64 is narrowed to
    float32; integer and other dtypes are refused with `DtypeError`.
    """
    torch = _torch_tensor(x)
    if torch is not None:
        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(np.uint16)
        if t.dtype in (torch.float32, torch.float16):
            return t.numpy()
        if t.dtype == torch.float64:
            return _narrow(t.numpy(), what)
        raise DtypeError(
            f"{what} have torch dtype {t.dtype}; expected float32, float16, bfloat16 or float64"
        )
    arr = _asarray(x, what)
    if arr.dtype.name == "bfloat16":  # ml_dtypes.bfloat16
        return np.ascontiguousarray(arr).view(np.uint16)
    if arr.dtype.kind == "f" and not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype == np.float64:
        return _narrow(arr, what)
    if arr.dtype not in _FLOATS:
        raise DtypeError(
            f"{what} have dtype {arr.dtype}; expected float32, float16, bfloat16 or float64"
        )
    return np.ascontiguousarray(arr)


def _narrow(arr: np.ndarray, what: str) -> np.ndarray:
    """float64 -> float32, refusing finite values float32 cannot hold (rather than making inf)."""
    big = np.isfinite(arr) & (np.abs(arr) > np.finfo(np.float32).max)
    if big.any():
        i = int(np.flatnonzero(big)[0])
        raise InvalidValueError(
            f"{what} contain {float(arr.reshape(-1)[i])} at flat index {i}, "
            "outside the range of float32"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def as_ids(x: Any, what: str = "ids") -> np.ndarray:
    """Returns token ids (numpy or torch integers) as a contiguous int64 numpy array."""
    if _torch_tensor(x) is not None:
        x = x.detach().cpu().numpy()
    arr = _asarray(x, what)
    if arr.dtype.kind not in "iu":
        raise DtypeError(f"{what} have dtype {arr.dtype}; expected integers (int64)")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        # int64 would wrap it to a negative id, and the error would name that one
        raise TokenIndexError(f"{what} contain {int(arr.max())}, beyond any token id")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _asarray(x: Any, what: str) -> np.ndarray:
    """`np.asarray(x)`, with a ragged nested list refused as a `ShapeError` naming `what`."""
    try:
        return np.asarray(x)
    except ValueError as e:
        raise ShapeError(f"{what} are not a rectangular array: {e}") from None
