"""Books for the `books` set (the paper's PG-19 stand-in), read in pure Python from Debian packages:
novels kept as R lazy-load data (r-cran-janeaustenr, r-cran-tokenizers) and Bibles kept as SWORD
zText modules (sword-text-kjv, sword-text-web; read here, not through diatheke, so a build needs
no SWORD library).

A package yields works `(name, pieces)` in reading order, for `corpus.works_documents`; pieces
are the units a long document may be cut at, each ending in a newline:

- R: every character vector of at least `MIN_TEXT_BYTES` in the package's lazy-load databases
  (`data/Rdata`, `R/sysdata`), named as the R object, one piece per element (a line of the book;
  an element holding a whole book is split at its lines). Smaller vectors are word lists or
  metadata, not books.
- SWORD: one work per Bible book, named as SWORD names the book in the module's versification;
  a title line (the module's book heading, else the name), then one piece per verse as
  `chapter:verse text`, chapters separated by a blank line, markup and notes stripped.

Damaged files raise `StoreCorruptError` naming the file; formats this reader does not know
(another SWORD driver, compression, markup or versification) raise `InvalidValueError`.
"""

from __future__ import annotations

import bz2
import gzip
import html
import lzma
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..exceptions import BackendUnavailableError, InvalidValueError, StoreCorruptError
from .debian import Package

if TYPE_CHECKING:
    from rdata.parser import RObject

__all__ = [
    "MIN_TEXT_BYTES",
    "VERSIFICATIONS",
    "SwordModule",
    "bible_books",
    "lazy_load_texts",
    "package_works",
    "plain_text",
    "sword_modules",
]

MIN_TEXT_BYTES = 64 * 1024
Work = tuple[str, list[str]]  # (name, pieces)


def package_works(package: Package) -> Iterator[Work]:
    """The works of a package: its R lazy-load texts, or the books of its SWORD modules."""
    databases = sorted(package.root.glob("usr/lib/R/*/*/data/Rdata.rdx"))
    databases += sorted(package.root.glob("usr/lib/R/*/*/R/sysdata.rdx"))
    modules = sword_modules(package.root)
    if not databases and not modules:
        raise InvalidValueError(
            f"{package.name}: holds neither R lazy-load data nor SWORD modules ({package.root})"
        )
    for rdx in databases:
        for name, lines in lazy_load_texts(rdx.with_suffix("")):
            yield name, [line + "\n" for line in lines]
    for module in modules:
        for book, pieces in bible_books(module):
            yield (f"{module.name}/{book}" if len(modules) > 1 else book), pieces


# --- R lazy-load databases ----------------------------------------------------------------------


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


# --- SWORD zText modules ------------------------------------------------------------------------


@dataclass(frozen=True)
class SwordModule:
    """A module as its .conf describes it: the [name], the conf's keys (the last value of a
    repeated key) and the directory of its data files."""

    name: str
    conf: dict[str, str]
    path: Path


def _read_conf(path: Path) -> tuple[str, dict[str, str]]:
    name, conf, key = "", {}, None
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise StoreCorruptError(f"{path}: cannot read: {e}") from e
    for line in lines:
        if key is not None:  # a value continued with a trailing backslash
            conf[key] = conf[key][:-1] + line
        elif line.startswith("[") and line.rstrip().endswith("]") and not name:
            name = line.strip()[1:-1]
        elif "=" in line and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            key = k.strip()
            conf[key] = v.strip()
        key = key if key is not None and conf[key].endswith("\\") else None
    if not name:
        raise StoreCorruptError(f"{path}: no [module name] line")
    return name, conf


def sword_modules(root: Path) -> list[SwordModule]:
    """The modules installed under `root/usr/share/sword`, by conf file name."""
    base = root / "usr" / "share" / "sword"
    modules = []
    for conf_path in sorted((base / "mods.d").glob("*.conf")):
        name, conf = _read_conf(conf_path)
        data_path = conf.get("DataPath", "").removeprefix("./")
        if not data_path:
            raise StoreCorruptError(f"{conf_path}: no DataPath")
        modules.append(SwordModule(name, conf, base / data_path))
    return modules


@dataclass(frozen=True)
class Book:
    name: str
    chapters: tuple[int, ...]  # verses per chapter


def _books(table: tuple[tuple[str, str], ...]) -> tuple[Book, ...]:
    return tuple(Book(name, tuple(int(n) for n in counts.split())) for name, counts in table)


# SWORD's versification tables (canon.h, canon_nrsva.h of libsword 1.9): book names and verses
# per chapter, by testament. NRSVA is KJV's with the deuterocanon after Malachi, and two chapters
# longer (3 John 1 and Revelation 12).
_KJV_OT = (
    (
        "Genesis",
        "31 25 24 26 32 22 24 22 29 32 32 20 18 24 21 16 27 33 38 18 34 24 20 67 34 35 46 "
        "22 35 43 55 32 20 31 29 43 36 30 23 23 57 38 34 34 28 34 31 22 33 26",
    ),
    (
        "Exodus",
        "22 25 22 31 23 30 25 32 35 29 10 51 22 31 27 36 16 27 25 26 36 31 33 18 40 37 21 "
        "43 46 38 18 35 23 35 35 38 29 31 43 38",
    ),
    (
        "Leviticus",
        "17 16 17 35 19 30 38 36 24 20 47 8 59 57 33 34 16 30 37 27 24 33 44 23 55 46 34",
    ),
    (
        "Numbers",
        "54 34 51 49 31 27 89 26 23 36 35 16 33 45 41 50 13 32 22 29 35 41 30 25 18 65 23 "
        "31 40 16 54 42 56 29 34 13",
    ),
    (
        "Deuteronomy",
        "46 37 29 49 33 25 26 20 29 22 32 32 18 29 23 22 20 22 21 20 23 30 25 22 19 19 26 "
        "68 29 20 30 52 29 12",
    ),
    ("Joshua", "18 24 17 24 15 27 26 35 27 43 23 24 33 15 63 10 18 28 51 9 45 34 16 33"),
    ("Judges", "36 23 31 24 31 40 25 35 57 18 40 15 25 20 20 31 13 31 30 48 25"),
    ("Ruth", "22 23 18 22"),
    (
        "I Samuel",
        "28 36 21 22 12 21 17 22 27 27 15 25 23 52 35 23 58 30 24 42 15 23 29 22 44 25 12 "
        "25 11 31 13",
    ),
    ("II Samuel", "27 32 39 12 25 23 29 18 13 19 27 31 39 33 37 23 29 33 43 26 22 51 39 25"),
    ("I Kings", "53 46 28 34 18 38 51 66 28 29 43 33 34 31 34 34 24 46 21 43 29 53"),
    ("II Kings", "18 25 27 44 27 33 20 29 37 36 21 21 25 29 38 20 41 37 37 21 26 20 37 20 30"),
    (
        "I Chronicles",
        "54 55 24 43 26 81 40 40 44 14 47 40 14 17 29 43 27 17 19 8 30 19 32 31 31 32 34 21 30",
    ),
    (
        "II Chronicles",
        "17 18 17 22 14 42 22 18 31 19 23 16 22 15 19 14 19 34 11 37 20 12 21 27 28 23 9 "
        "27 36 27 21 33 25 33 27 23",
    ),
    ("Ezra", "11 70 13 24 17 22 28 36 15 44"),
    ("Nehemiah", "11 20 32 23 19 19 73 18 38 39 36 47 31"),
    ("Esther", "22 23 15 17 14 14 10 17 32 3"),
    (
        "Job",
        "22 13 26 21 27 30 21 22 35 22 20 25 28 22 35 22 16 21 29 29 34 30 17 25 6 14 23 "
        "28 25 31 40 22 33 37 16 33 24 41 30 24 34 17",
    ),
    (
        "Psalms",
        "6 12 8 8 12 10 17 9 20 18 7 8 6 7 5 11 15 50 14 9 13 31 6 10 22 12 14 9 11 12 24 "
        "11 22 22 28 12 40 22 13 17 13 11 5 26 17 11 9 14 20 23 19 9 6 7 23 13 11 11 17 "
        "12 8 12 11 10 13 20 7 35 36 5 24 20 28 23 10 12 20 72 13 19 16 8 18 12 13 17 7 "
        "18 52 17 16 15 5 23 11 13 12 9 9 5 8 28 22 35 45 48 43 13 31 7 10 10 9 8 18 19 2 "
        "29 176 7 8 9 4 8 5 6 5 6 8 8 3 18 3 3 21 26 9 8 24 13 10 7 12 15 21 10 20 14 9 6",
    ),
    (
        "Proverbs",
        "33 22 35 27 23 35 27 36 18 32 31 28 25 35 33 33 28 24 29 30 31 29 35 34 28 28 27 "
        "28 27 33 31",
    ),
    ("Ecclesiastes", "18 26 22 16 20 12 29 17 18 20 10 14"),
    ("Song of Solomon", "17 17 11 16 16 13 13 14"),
    (
        "Isaiah",
        "31 22 26 6 30 13 25 22 21 34 16 6 22 32 9 14 14 7 25 6 17 25 18 23 12 21 13 29 "
        "24 33 9 20 24 17 10 22 38 22 8 31 29 25 28 28 25 13 15 22 26 11 23 15 12 17 13 "
        "12 21 14 21 22 11 12 19 12 25 24",
    ),
    (
        "Jeremiah",
        "19 37 25 31 31 30 34 22 26 25 23 17 27 22 21 21 27 23 15 18 14 30 40 10 38 24 22 "
        "17 32 24 40 44 26 22 19 32 21 28 18 16 18 22 13 30 5 28 7 47 39 46 64 34",
    ),
    ("Lamentations", "22 22 66 22 22"),
    (
        "Ezekiel",
        "28 10 27 17 17 14 27 18 11 22 25 28 23 23 8 63 24 32 14 49 32 31 49 27 17 21 36 "
        "26 21 26 18 32 33 31 15 38 28 23 29 49 26 20 27 31 25 24 23 35",
    ),
    ("Daniel", "21 49 30 37 31 28 28 27 27 21 45 13"),
    ("Hosea", "11 23 5 19 15 11 16 14 17 15 12 14 16 9"),
    ("Joel", "20 32 21"),
    ("Amos", "15 16 15 13 27 14 17 14 15"),
    ("Obadiah", "21"),
    ("Jonah", "17 10 10 11"),
    ("Micah", "16 13 12 13 15 16 20"),
    ("Nahum", "15 13 19"),
    ("Habakkuk", "17 20 19"),
    ("Zephaniah", "18 15 20"),
    ("Haggai", "15 23"),
    ("Zechariah", "21 13 10 14 11 15 14 23 17 12 17 14 9 21"),
    ("Malachi", "14 17 18 6"),
)
_KJV_NT = (
    (
        "Matthew",
        "25 23 17 25 48 34 29 34 38 42 30 50 58 36 39 28 27 35 30 34 46 46 39 51 46 75 66 20",
    ),
    ("Mark", "45 28 35 41 43 56 37 38 50 52 33 44 37 72 47 20"),
    ("Luke", "80 52 38 44 39 49 50 56 62 42 54 59 35 35 32 31 37 43 48 47 38 71 56 53"),
    ("John", "51 25 36 54 47 71 53 59 41 42 57 50 38 31 27 33 26 40 42 31 25"),
    ("Acts", "26 47 26 37 42 15 60 40 43 48 30 25 52 28 41 40 34 28 41 38 40 30 35 27 27 32 44 31"),
    ("Romans", "32 29 31 25 21 23 25 39 33 21 36 21 14 23 33 27"),
    ("I Corinthians", "31 16 23 21 13 20 40 13 27 33 34 31 13 40 58 24"),
    ("II Corinthians", "24 17 18 18 21 18 16 24 15 18 33 21 14"),
    ("Galatians", "24 21 29 31 26 18"),
    ("Ephesians", "23 22 21 32 33 24"),
    ("Philippians", "30 30 21 23"),
    ("Colossians", "29 23 25 18"),
    ("I Thessalonians", "10 20 13 18 28"),
    ("II Thessalonians", "12 17 18"),
    ("I Timothy", "20 15 16 16 25 21"),
    ("II Timothy", "18 26 17 22"),
    ("Titus", "16 15 15"),
    ("Philemon", "25"),
    ("Hebrews", "14 18 19 16 14 20 28 13 28 39 40 29 25"),
    ("James", "27 26 18 17 20"),
    ("I Peter", "25 25 22 19 14"),
    ("II Peter", "21 22 18"),
    ("I John", "10 29 24 21 21"),
    ("II John", "13"),
    ("III John", "14"),
    ("Jude", "25"),
    ("Revelation of John", "20 29 22 11 14 17 17 13 21 11 19 17 18 20 8 21 18 24 21 15 27 21"),
)
_NRSVA_DEUTEROCANON = (
    ("Tobit", "22 14 17 21 22 18 16 21 6 13 18 22 17 15"),
    ("Judith", "16 28 10 15 24 21 32 36 14 23 23 20 20 19 14 25"),
    ("Esther (Greek)", "22 23 15 17 14 14 10 17 32 13 12 6 18 19 16 24"),
    ("Wisdom", "16 24 19 20 23 25 30 21 18 21 26 27 19 31 19 29 21 25 22"),
    (
        "Sirach",
        "30 18 31 31 15 37 36 19 18 31 34 18 26 27 20 30 32 33 30 31 28 27 27 34 26 29 30 "
        "26 28 25 31 24 33 31 26 31 31 34 35 30 22 25 33 23 26 20 25 25 16 29 30",
    ),
    ("Baruch", "22 35 37 37 9 73"),
    ("Prayer of Azariah", "68"),
    ("Susanna", "64"),
    ("Bel and the Dragon", "42"),
    ("I Maccabees", "64 70 60 61 68 63 50 32 73 89 74 53 53 49 41 24"),
    ("II Maccabees", "36 32 40 50 27 31 42 36 29 38 38 45 26 46 39"),
    ("I Esdras", "58 30 24 63 73 34 15 96 55"),
    ("Prayer of Manasses", "15"),
    ("Additional Psalm", "7"),
    ("III Maccabees", "29 33 30 21 51 41 23"),
    ("II Esdras", "40 48 36 52 56 59 140 63 47 59 46 51 58 48 63 78"),
    ("IV Maccabees", "35 24 21 26 38 35 23 29 32 21 27 19 27 20 32 25 24 24"),
)


def _nrsva_nt() -> tuple[Book, ...]:
    longer = {("III John", 0): 15, ("Revelation of John", 11): 18}
    return tuple(
        Book(b.name, tuple(longer.get((b.name, c), n) for c, n in enumerate(b.chapters)))
        for b in _books(_KJV_NT)
    )


VERSIFICATIONS: dict[str, tuple[tuple[Book, ...], tuple[Book, ...]]] = {
    "KJV": (_books(_KJV_OT), _books(_KJV_NT)),
    "NRSVA": (_books(_KJV_OT) + _books(_NRSVA_DEUTEROCANON), _nrsva_nt()),
}

# Markup by SourceType (SWORD's default is Plain): notes (footnotes, cross references) go with
# their text, leaving a space where they stood between a word and the next; a title is a line of
# its own; an empty element (a milestone: verse, line or paragraph marks) is a space; any other
# tag goes, its text stays (word tags sit right against punctuation). A tag cut off at the end
# (the WEB has an entry truncated at zText's 64 KiB limit) goes too.
_NOTES = {
    "OSIS": re.compile(r"<note\b[^>]*/>|<note\b.*?</note>", re.S),
    "THML": re.compile(r"<note\b[^>]*/>|<note\b.*?</note>", re.S),
    "GBF": re.compile(r"<RF>.*?<Rf>", re.S),
}
_TITLE = re.compile(r"</?title\b[^>]*>")
_EMPTY_TAG = re.compile(r"<[^>]*/>")
_TAG = re.compile(r"<[^>]*(?:>|$)")
_NOTE_MARK = "\0"  # where a note stood (entries hold no NUL)
_NOTE_GAP = re.compile(r"(?<=\S)\0+(?=[\w\u201c\u2018(])")
_SPACE = re.compile(r"[^\S\n]+")
_ENCODINGS = {"UTF-8": "utf-8", "LATIN-1": "latin-1"}  # SWORD's default is Latin-1
ENTRY_FORMAT = struct.Struct("<IIH")  # block, offset in the block, size
BLOCK_FORMAT = struct.Struct("<III")  # offset in .bzz, compressed size, uncompressed size


def plain_text(markup: str, source_type: str = "OSIS") -> str:
    """Text of a SWORD entry: notes dropped, tags stripped, entities decoded (but in GBF, which
    has none), whitespace collapsed; lines (a title ends one) joined by newlines, none empty."""
    kind = source_type.upper()
    if kind not in ("OSIS", "THML", "GBF", "PLAIN"):
        raise InvalidValueError(f"SWORD markup {source_type!r} is not supported")
    text = markup
    if kind != "PLAIN":
        text = _NOTES[kind].sub(_NOTE_MARK, text)
        text = _TAG.sub("", _EMPTY_TAG.sub(" ", _TITLE.sub("\n", text)))
        text = _NOTE_GAP.sub(" ", text).replace(_NOTE_MARK, "")
        if kind != "GBF":
            text = html.unescape(text)
    lines = (_SPACE.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


# What this reader supports of a module's conf, with SWORD's default for a key left out.
_SUPPORTED = {
    "ModDrv": ("", ("ZTEXT",)),
    "CompressType": ("LZSS", ("ZIP",)),
    "BlockType": ("CHAPTER", ("BOOK", "CHAPTER", "VERSE")),  # any: the index names each block
    "SourceType": ("Plain", ("OSIS", "THML", "GBF", "PLAIN")),
    "Encoding": ("Latin-1", tuple(_ENCODINGS)),
    "Versification": ("KJV", tuple(VERSIFICATIONS)),
}


def _settings(module: SwordModule) -> dict[str, str]:
    """The conf's values of `_SUPPORTED`'s keys, upper-cased; a clear error for one not
    supported."""
    settings = {}
    for key, (default, supported) in _SUPPORTED.items():
        value = module.conf.get(key, default)
        if value.upper() not in supported:
            raise InvalidValueError(
                f"SWORD module {module.name}: {key}={value} is not supported "
                f"(only {', '.join(supported)})"
            )
        settings[key] = value.upper()
    return settings


def _records(path: Path, fmt: struct.Struct) -> list[tuple[int, ...]]:
    data = path.read_bytes()
    if len(data) % fmt.size:
        raise StoreCorruptError(f"{path}: {len(data)} bytes, not a whole number of entries")
    return list(fmt.iter_unpack(data))


class _Testament:
    """One testament's three files: verse entries (.bzv) into zlib blocks (.bzs index into .bzz),
    the last block read kept (a book's verses follow each other in its blocks)."""

    def __init__(self, directory: Path, prefix: str, encoding: str) -> None:
        self.bzv, self.bzs, self.bzz = (directory / f"{prefix}.{s}" for s in ("bzv", "bzs", "bzz"))
        self.entries = _records(self.bzv, ENTRY_FORMAT)
        self.blocks = _records(self.bzs, BLOCK_FORMAT)
        self.data = self.bzz.read_bytes()
        self.encoding = encoding
        self._cached: tuple[int, bytes] | None = None

    def _block(self, number: int) -> bytes:
        if self._cached is not None and self._cached[0] == number:
            return self._cached[1]
        if number >= len(self.blocks):
            raise StoreCorruptError(f"{self.bzs}: no block {number} ({len(self.blocks)} blocks)")
        offset, size, plain_size = self.blocks[number]
        where = f"{self.bzz} block {number}"
        if offset + size > len(self.data):
            raise StoreCorruptError(f"{where} at {offset}+{size} lies outside the file")
        try:
            block = zlib.decompress(self.data[offset : offset + size])
        except zlib.error as e:
            raise StoreCorruptError(f"{where}: cannot decompress: {e}") from e
        if len(block) != plain_size:
            raise StoreCorruptError(f"{where}: {len(block)} bytes, the index says {plain_size}")
        self._cached = (number, block)
        return block

    def markup(self, i: int) -> str:
        """Entry `i`'s raw text ("" for an empty entry)."""
        number, offset, size = self.entries[i]
        if size == 0:
            return ""
        block = self._block(number)
        if offset + size > len(block):
            raise StoreCorruptError(f"{self.bzv}: entry {i} at {offset}+{size} overruns its block")
        try:
            return block[offset : offset + size].decode(self.encoding)
        except UnicodeDecodeError as e:
            raise StoreCorruptError(f"{self.bzv}: entry {i}: {e}") from e


def _entries_of(books: tuple[Book, ...]) -> int:
    # Per testament: a module and a testament heading, then per book its heading and per
    # chapter a heading followed by the verses.
    return 2 + sum(1 + len(b.chapters) + sum(b.chapters) for b in books)


def bible_books(module: SwordModule) -> Iterator[Work]:
    """`(book name, pieces)` of a zText module's books in canonical order (module doc). Books
    without any verse text are left out, as is a testament the module lacks (no files)."""
    settings = _settings(module)
    source_type, encoding = settings["SourceType"], _ENCODINGS[settings["Encoding"]]
    for prefix, books in zip(("ot", "nt"), VERSIFICATIONS[settings["Versification"]]):
        if not (module.path / f"{prefix}.bzv").exists():
            continue
        testament = _Testament(module.path, prefix, encoding)
        if len(testament.entries) != _entries_of(books):
            raise StoreCorruptError(
                f"{testament.bzv}: {len(testament.entries)} entries; the "
                f"{settings['Versification']} versification has {_entries_of(books)}"
            )
        yield from _testament_books(testament, books, source_type)


def _testament_books(
    testament: _Testament, books: tuple[Book, ...], source_type: str
) -> Iterator[Work]:
    i = 2  # the module and testament headings hold importer metadata, not text of a book
    for book in books:
        title = plain_text(testament.markup(i), source_type) or book.name
        i += 1
        pieces, verses, previous = [title + "\n\n"], 0, None
        for c, count in enumerate(book.chapters, 1):
            if c > 1:
                pieces[-1] += "\n"
            heading = plain_text(testament.markup(i), source_type)
            if heading:
                pieces.append(heading + "\n")
            i += 1
            for v in range(1, count + 1):
                # SWORD links a verse range by repeating the first verse's entry: text once.
                entry, text = testament.entries[i], ""
                if entry != previous:
                    text = plain_text(testament.markup(i), source_type)
                previous, i = entry, i + 1
                if text:
                    pieces.append(f"{c}:{v} {text}\n")
                    verses += 1
        if verses:
            yield book.name, pieces
