"""Type stubs for the Rust extension `fot_mem._core` (checked by `python -m mypy.stubtest`)."""

import os
from typing import Any, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_CHUNK_TOKENS",
    "FORMAT_VERSION",
    "MAX_K",
    "MappedKeys",
    "Store",
    "__version__",
    "_panic_for_tests",
    "check_allocation",
    "exact_kernel_info",
    "hnswlib_check",
    "hnswlib_seal",
    "verify_store",
]

FORMAT_VERSION: int
DEFAULT_CHUNK_TOKENS: int
MAX_K: int
__version__: str

_F32 = npt.NDArray[np.float32]

def _panic_for_tests(message: str) -> None: ...
def exact_kernel_info() -> dict[str, Any]: ...
def check_allocation(nbytes: int | None, what: str) -> None: ...
def verify_store(path: str | os.PathLike[str], deep: bool = True) -> dict[str, Any]: ...
def hnswlib_seal(
    bin: str | os.PathLike[str],
    seal: str | os.PathLike[str],
    start: int,
    count: int,
    dim: int,
    m: int,
    ef_construction: int,
) -> None: ...
def hnswlib_check(
    bin: str | os.PathLike[str],
    seal: str | os.PathLike[str],
    start: int,
    count: int,
    dim: int,
    m: int,
    ef_construction: int,
) -> bool: ...

@final
class MappedKeys:
    """Keeps a chunk mapped while a numpy view of it lives."""

@final
class Store:
    """A thread-safe handle on an open store; `fot_mem.MemoryStore` wraps it."""

    @staticmethod
    def create(
        path: str | os.PathLike[str],
        layers: list[int],
        kv_heads: int,
        head_dim: int,
        value_dim: int | None = None,
        dtype: str = "float32",
        chunk_tokens: int = ...,
        hnsw: dict[str, Any] | None = None,
    ) -> Store: ...
    @staticmethod
    def open(
        path: str | os.PathLike[str], readonly: bool = False, verify_reads: bool = False
    ) -> Store: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def path(self) -> str: ...
    @property
    def readonly(self) -> bool: ...
    @property
    def config(self) -> dict[str, Any]: ...
    def documents(self) -> list[str]: ...
    def contains(self, doc: str) -> bool: ...
    def delete_document(self, doc: str) -> bool: ...
    def length(self, doc: str, layer: int) -> int: ...
    def append(self, doc: str, layer: int, keys: np.ndarray, values: np.ndarray) -> int: ...
    def search(
        self,
        docs: list[str],
        layer: int,
        queries: np.ndarray,
        k: int,
        backend: str = "exact",
        ef: int | None = None,
    ) -> tuple[_F32, npt.NDArray[np.int64]]: ...
    def gather(self, doc: str, layer: int, ids: npt.NDArray[np.int64]) -> tuple[_F32, _F32]: ...
    def read(self, doc: str, layer: int, start: int, stop: int) -> tuple[_F32, _F32]: ...
    def key_views(self, doc: str, layer: int, kv_head: int) -> list[tuple[int, np.ndarray]]: ...
    def value_views(self, doc: str, layer: int, kv_head: int) -> list[tuple[int, np.ndarray]]: ...
    def layer_path(self, doc: str, layer: int) -> str | None: ...
    def nbytes(self, doc: str | None = None) -> int: ...
    def build_indexes(self) -> int: ...
    def wait_for_indexes(self) -> dict[str, Any]: ...
    def index_stats(self) -> dict[str, Any]: ...
    def indexed_tokens(self, doc: str, layer: int) -> int: ...
    def flush(self) -> None: ...
    def refresh(self) -> None: ...
