"""Books for the `books` set (the paper's PG-19 stand-in), read in pure Python from Debian packages:
novels kept as R lazy-load data (r-cran-janeaustenr, r-cran-tokenizers) and Bibles kept as SWORD
zText modules (sword-text-kjv, sword-text-web; read here, not through diatheke, so a build needs
no SWORD library).

A package yields works `(name, pieces)` in reading order, for `corpus.works_documents`; pieces
are the units a long document may be cut at, each ending in a newline:

- R: every character vector of at least `rdata.MIN_TEXT_BYTES` in the package's lazy-load databases
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

import html
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..exceptions import InvalidValueError, StoreCorruptError
from .debian import Package
from .rdata import lazy_load_texts
from .versification import VERSIFICATIONS, Book

__all__ = [
    "VERSIFICATIONS",
    "SwordModule",
    "bible_books",
    "lazy_load_texts",
    "package_works",
    "plain_text",
    "sword_modules",
]

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
