"""Texts kept as R lazy-load data (`data/Rdata`, `R/sysdata` of an R package), read in pure Python
for the `books` set (`train.books`): the character vectors long enough to be books."""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..exceptions import BackendUnavailableError, InvalidValueError, StoreCorruptError

if TYPE_CHECKING:
    from rdata.parser import RObject

MIN_TEXT_BYTES = 64 * 1024


def _parse_r(data: bytes, source: Path) -> RObject:
    try:
        from rdata.parser import parse_data
    except ImportError as e:
        raise BackendUnavailableError(
            "reading R data needs the PyPI package rdata (pip install 'rdata>=0.11')"
        ) from e
    try:
        # The extension only tells rdata the stream is one serialized object (no warning).
        return parse_data(data, extension=".rds").object
    except Exception as e:  # rdata raises assorted types on a damaged stream
        raise StoreCorruptError(f"{source}: not a readable R serialization: {e!r}") from e


def _symbol(tag: RObject | None) -> str | None:
    from rdata.parser import RObjectType

    if tag is not None and tag.info.type == RObjectType.REF:
        tag = tag.referenced_object
    if tag is None or tag.info.type != RObjectType.SYM:
        return None
    return _char(tag.value)


def _char(obj: RObject) -> str | None:
    """A CHARSXP's string (None for NA), decoded as its encoding flag says (UTF-8 unless Latin-1:
    R packages are serialized with UTF-8 as the native encoding)."""
    if obj.value is None:
        return None
    latin1 = obj.info.gp & 4
    return bytes(obj.value).decode("latin-1" if latin1 else "utf-8")


def _strings(obj: RObject) -> list[str | None] | None:
    from rdata.parser import RObjectType

    if obj.info.type != RObjectType.STR:
        return None
    return [_char(c) for c in obj.value]


def _names(obj: RObject) -> list[str | None]:
    from rdata.parser import RObjectType

    attr = obj.attributes
    while attr is not None and attr.info.type in (RObjectType.LIST, RObjectType.ATTRLIST):
        car, cdr = attr.value
        if _symbol(attr.tag) == "names":
            return _strings(car) or []
        attr = cdr
    return []


def _index(rdx: Path) -> tuple[dict[str, tuple[int, int]], int]:
    """The lazy-load index: `{object name: (offset, length)}` into the .rdb and the compression
    code. R writes it with saveRDS: gzip around `list(variables = list(name = c(offset,
    length), ...), references = ..., compressed = TRUE | 2 | 3)`."""
    from rdata.parser import RObjectType

    try:
        root = _parse_r(gzip.decompress(rdx.read_bytes()), rdx)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise StoreCorruptError(f"{rdx}: not a gzip-compressed R index: {e}") from e
    fields = dict(zip(_names(root), root.value)) if root.info.type == RObjectType.VEC else {}
    variables, compressed = fields.get("variables"), fields.get("compressed")
    if variables is None or compressed is None or variables.info.type != RObjectType.VEC:
        raise StoreCorruptError(f"{rdx}: not an R lazy-load index (no variables/compressed)")
    index = {}
    for name, where in zip(_names(variables), variables.value):
        if name is None or where.info.type != RObjectType.INT or len(where.value) != 2:
            raise StoreCorruptError(f"{rdx}: entry {name!r} is not c(offset, length)")
        index[name] = (int(where.value[0]), int(where.value[1]))
    return index, int(compressed.value[0])


def _inflate(blob: bytes, compressed: int, where: str) -> bytes:
    """One object of an .rdb: a 4-byte big-endian length, then the serialized object, compressed
    as R's lazy-load code says: 1 (TRUE) zlib; 2 and 3 a type byte first, b"0" stored, b"1" zlib,
    b"2" bzip2, b"Z" xz (3 only)."""
    if len(blob) < 5:
        raise StoreCorruptError(f"{where}: truncated ({len(blob)} bytes)")
    (size,) = struct.unpack(">I", blob[:4])
    kind, body = (b"1", blob[4:]) if compressed == 1 else (blob[4:5], blob[5:])
    decompress: dict[bytes, Callable[[bytes], bytes]] = {
        b"0": bytes,
        b"1": zlib.decompress,
        b"2": bz2.decompress,
    }
    if compressed == 3:
        decompress[b"Z"] = lzma.decompress
    if compressed not in (1, 2, 3) or kind not in decompress:
        raise InvalidValueError(f"{where}: unknown R compression {compressed}/{kind!r}")
    try:
        data = decompress[kind](body)
    except (zlib.error, OSError, lzma.LZMAError, EOFError, ValueError) as e:
        raise StoreCorruptError(f"{where}: cannot decompress: {e}") from e
    if len(data) != size:
        raise StoreCorruptError(f"{where}: {len(data)} bytes, its header says {size}")
    return data


def lazy_load_texts(
    stem: str | Path, min_bytes: int | None = None
) -> Iterator[tuple[str, list[str]]]:
    """`(object name, lines)` of the character vectors of at least `min_bytes` (default
    `MIN_TEXT_BYTES`) of text in the R lazy-load database `stem.rdb` / `stem.rdx`, in index
    order. NA elements are left out; an element holding several lines (a whole book in one
    string) is split at them."""
    stem = Path(stem)
    min_bytes = MIN_TEXT_BYTES if min_bytes is None else min_bytes
    rdx, rdb = stem.with_suffix(".rdx"), stem.with_suffix(".rdb")
    index, compressed = _index(rdx)
    data = rdb.read_bytes()
    for name, (offset, length) in index.items():
        if offset < 0 or length < 0 or offset + length > len(data):
            raise StoreCorruptError(
                f"{rdb}: object {name!r} at {offset}+{length} lies outside the file "
                f"({len(data)} bytes)"
            )
        where = f"{rdb} object {name!r}"
        obj = _parse_r(_inflate(data[offset : offset + length], compressed, where), rdb)
        try:
            strings = _strings(obj)
        except UnicodeDecodeError as e:
            raise StoreCorruptError(f"{where}: {e}") from e
        if strings is None:
            continue
        lines = [line for s in strings if s is not None for line in _lines(s)]
        if sum(len(line.encode("utf-8")) + 1 for line in lines) >= min_bytes:
            yield name, lines


def _lines(s: str) -> list[str]:
    # Project Gutenberg files keep their byte order mark and CRLF line ends.
    return s.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
