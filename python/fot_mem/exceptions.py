"""Every error fot_mem raises derives from `FotMemError`.

Where a builtin exception fits, the class derives from it too, so `except FileNotFoundError`,
`except ValueError` or `except TypeError` keep working. The Rust core raises these classes by name
(see `rust/bindings/errors.rs`), so a rename here must be made there as well.
"""

from __future__ import annotations

__all__ = [
    "AllocationError",
    "BackendUnavailableError",
    "DtypeError",
    "FormatVersionError",
    "FotMemError",
    "InvalidValueError",
    "NotAStoreError",
    "ReadOnlyError",
    "ShapeError",
    "StoreClosedError",
    "StoreCorruptError",
    "StoreExistsError",
    "StoreIOError",
    "StoreLockedError",
    "StoreNotFoundError",
    "TokenIndexError",
    "UnknownLayerError",
]


class FotMemError(Exception):
    """Root of every error fot_mem raises."""


class StoreNotFoundError(FotMemError, FileNotFoundError):
    """No store exists at the path."""


class StoreExistsError(FotMemError, FileExistsError):
    """`create` found a store already there."""


class NotAStoreError(FotMemError):
    """The path exists but is not a fot_mem store (or is a non-empty directory at `create`)."""


class StoreCorruptError(FotMemError):
    """Store files are damaged: a bad checksum, a truncated chunk file, unreadable metadata."""


class FormatVersionError(FotMemError):
    """The store was written in an on-disk format version this build does not read."""


class StoreLockedError(FotMemError):
    """Another handle already has the store open for writing."""


class ReadOnlyError(FotMemError, PermissionError):
    """A write through a handle opened with `readonly=True`."""


class StoreClosedError(FotMemError, ValueError):
    """The store handle was used after `close()`."""


class ShapeError(FotMemError, ValueError):
    """An array has the wrong number of dimensions or a wrong size."""


class DtypeError(FotMemError, TypeError):
    """An array (or argument) has a type the store cannot take."""


class InvalidValueError(FotMemError, ValueError):
    """A value is out of range: NaN or infinite data, k <= 0, a bad configuration number."""


class UnknownLayerError(FotMemError, ValueError):
    """The layer is not one of the store's memory layers."""


class TokenIndexError(FotMemError, IndexError):
    """A token id or range lies outside what the document-layer holds."""


class StoreIOError(FotMemError, OSError):
    """The operating system refused a read or write of a store file."""


class BackendUnavailableError(FotMemError, ImportError):
    """A search backend whose optional dependency (faiss, hnswlib) is not installed."""


class AllocationError(FotMemError, MemoryError):
    """A call whose output (sized by its arguments: k, the number of queries or ids) needs more
    memory than the machine has available; raised before anything is allocated."""
