"""Long documents out of package file trees: directory subtrees of text, built bottom-up.

Invariant: every text file of a tree that a set keeps lands in exactly one document, as a header
line `# ===== relative/path =====` followed by its text (plus a newline if it lacks a final
one). Directories are visited in sorted order, children after their own files. A directory's
pool is its own files followed by whatever its children left over (children whose pools stayed
under `min_bytes`); once a pool reaches `min_bytes` it is emitted, as one document or, above
`max_bytes`, as several cut at file boundaries into near-equal parts (see `_split`), and nothing
of it is passed up. The tree's root emits whatever is left, however small. So output is a pure
function of the tree and the sizes, and a document's id `package/relative/dir` (with `#n` for
part n of a split directory) names the directory all its files lie under.

Text files: at most `max_file_bytes`, no NUL byte, valid UTF-8, not empty. Debian compresses
documentation (`X.tex.gz`); such files are read decompressed under their name without `.gz`
(left out when `X` itself is there too). Symlinks are never followed.

A set may instead name its packages' works (`CorpusSet.works`: novels, Bible books, each given
as pieces to cut at); `works_documents` gathers them in reading order until a document holds
`min_bytes`, id `package/Name` (or `package/First..Last` for several), cut above `max_bytes`
like a directory.

The train/validation split hashes the document's directory (its id without `#n`), so the parts
of one directory never straddle splits and the split of a directory never changes between builds.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import re
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..exceptions import InvalidValueError
from .debian import Package, unpack_tarball

__all__ = [
    "HEADER",
    "MAX_DOC_BYTES",
    "MAX_FILE_BYTES",
    "MIN_DOC_BYTES",
    "CorpusSet",
    "package_trees",
    "read_text",
    "split_of",
    "tree_documents",
    "works_documents",
]

MIN_DOC_BYTES = 64 * 1024
MAX_DOC_BYTES = 4 * 1024 * 1024
MAX_FILE_BYTES = 1024 * 1024
HEADER = "# ===== {path} =====\n"
TARBALL_SUFFIXES = (".tar.xz", ".tar.gz", ".tar.bz2", ".tar")
_PART = re.compile(r"#\d+$")


def read_text(path: Path, max_file_bytes: int = MAX_FILE_BYTES) -> str | None:
    """The file's text, or None when it is not a text file the corpus keeps (see module doc)."""
    try:
        if path.stat().st_size > max_file_bytes and not path.name.endswith(".gz"):
            return None
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read(max_file_bytes + 1)
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error):  # gzip.BadGzipFile is an OSError
        return None
    if not data or len(data) > max_file_bytes or b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True)
class _Entry:
    text: str  # header + file text (+ newline)
    size: int  # its UTF-8 bytes


def _usable_name(name: str) -> bool:
    # Surrogate-escaped (non-UTF-8) names cannot be written into the text, a newline would break
    # the header line.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\n" not in name


def _list(directory: Path, suffixes: tuple[str, ...] | None) -> tuple[list[Path], list[Path]]:
    files, dirs = [], []
    with os.scandir(directory) as it:
        entries = sorted(it, key=lambda e: e.name)
    names = {e.name for e in entries}
    for e in entries:
        if e.is_symlink() or not _usable_name(e.name):
            continue
        if e.is_dir():
            dirs.append(Path(e.path))
        elif e.is_file():
            plain = e.name[:-3] if e.name.endswith(".gz") else e.name
            if plain != e.name and plain in names:
                continue
            if suffixes is None or plain.endswith(suffixes):
                files.append(Path(e.path))
    return files, dirs


def _split(pool: list[_Entry], max_bytes: int, min_bytes: int) -> list[list[_Entry]]:
    """Cut at file boundaries into n = ceil(total / max) near-equal parts: a file goes to the
    next part once its midpoint passes the part's share, or when it would push the part past
    `max_bytes`. A final part under `min_bytes` joins the one before, which may then pass
    `max_bytes` by less than `min_bytes`; a file larger than `max_bytes` is a part of its own."""
    total = sum(e.size for e in pool)
    n = max(1, math.ceil(total / max_bytes))
    parts: list[list[_Entry]] = [[]]
    done = current = 0
    for e in pool:
        past_share = len(parts) < n and done + current + e.size / 2 > len(parts) * total / n
        if parts[-1] and (current + e.size > max_bytes or past_share):
            parts.append([])
            done += current
            current = 0
        parts[-1].append(e)
        current += e.size
    if len(parts) > 1 and current < min_bytes:
        parts[-2].extend(parts.pop())
    return parts


def tree_documents(
    root: str | os.PathLike[str],
    prefix: str,
    *,
    suffixes: tuple[str, ...] | None = None,
    min_bytes: int = MIN_DOC_BYTES,
    max_bytes: int = MAX_DOC_BYTES,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> Iterator[tuple[str, str]]:
    """`(doc_id, text)` of the directory subtrees of `root` (module doc); ids start `prefix/`,
    header paths are relative to `root`. `suffixes` keeps only files whose names end so."""
    if not 0 < min_bytes <= max_bytes:
        raise InvalidValueError(f"need 0 < min_bytes <= max_bytes, got {min_bytes}, {max_bytes}")

    def emit(rel: str, pool: list[_Entry]) -> Iterator[tuple[str, str]]:
        doc_id = f"{prefix}/{rel}" if rel else prefix
        parts = _split(pool, max_bytes, min_bytes)
        for i, part in enumerate(parts):
            yield (f"{doc_id}#{i}" if len(parts) > 1 else doc_id), "".join(e.text for e in part)

    def subtree(directory: Path, rel: str) -> Generator[tuple[str, str], None, list[_Entry]]:
        files, dirs = _list(directory, suffixes)
        pool = []
        for path in files:
            text = read_text(path, max_file_bytes)
            if text is None:
                continue
            name = path.name[:-3] if path.name.endswith(".gz") else path.name
            header = HEADER.format(path=f"{rel}/{name}" if rel else name)
            entry = header + text + ("" if text.endswith("\n") else "\n")
            pool.append(_Entry(entry, len(entry.encode("utf-8"))))
        for sub in dirs:
            pool += yield from subtree(sub, f"{rel}/{sub.name}" if rel else sub.name)
        if sum(e.size for e in pool) < min_bytes:
            return pool
        yield from emit(rel, pool)
        return []

    left = yield from subtree(Path(root), "")
    if left:
        yield from emit("", left)


def _strip(root: Path) -> Path:
    # Descend through directories that hold nothing but one directory (usr/ -> share/ ...), so
    # ids and headers start where the package's contents branch.
    while True:
        with os.scandir(root) as it:
            entries = list(it)
        if len(entries) != 1 or entries[0].is_symlink() or not entries[0].is_dir():
            return root
        root = Path(entries[0].path)


def package_trees(
    package: Package, *, max_file_bytes: int = MAX_FILE_BYTES
) -> list[tuple[str, Path]]:
    """`(id prefix, tree)` to read of a package. A package that ships source tarballs in
    `/usr/src` (linux-source-*) is read from those, unpacked once next to its extraction; any
    other package from its extracted tree."""
    src = package.root / "usr" / "src"
    tarballs = sorted(p for p in src.glob("*") if p.is_file() and p.name.endswith(TARBALL_SUFFIXES))
    if not tarballs:
        return [(package.name, _strip(package.root))]
    trees = []
    for tarball in tarballs:
        stem = next(tarball.name[: -len(s)] for s in TARBALL_SUFFIXES if tarball.name.endswith(s))
        dest = package.root.with_name(f"{package.name}.tarballs") / stem
        tree = unpack_tarball(tarball, dest, max_file_bytes=max_file_bytes)
        prefix = package.name if len(tarballs) == 1 else f"{package.name}/{stem}"
        trees.append((prefix, _strip(tree)))
    return trees


def works_documents(
    works: Iterable[tuple[str, Sequence[str]]],
    prefix: str,
    *,
    min_bytes: int = MIN_DOC_BYTES,
    max_bytes: int = MAX_DOC_BYTES,
) -> Iterator[tuple[str, str]]:
    """`(doc_id, text)` of named works `(name, pieces)` in reading order: works are gathered until
    they hold `min_bytes` (a blank line between two), so a work that large following a document
    just emitted is one of its own, `prefix/Name`, and smaller ones share one,
    `prefix/First..Last`; what is left at the end is a document however small. One above
    `max_bytes` is cut at piece boundaries as `_split` cuts a directory (`#n` ids)."""
    if not 0 < min_bytes <= max_bytes:
        raise InvalidValueError(f"need 0 < min_bytes <= max_bytes, got {min_bytes}, {max_bytes}")
    names: list[str] = []
    pool: list[_Entry] = []

    def emit() -> Iterator[tuple[str, str]]:
        doc_id = f"{prefix}/{names[0]}" + (f"..{names[-1]}" if len(names) > 1 else "")
        parts = _split(pool, max_bytes, min_bytes)
        for i, part in enumerate(parts):
            yield (f"{doc_id}#{i}" if len(parts) > 1 else doc_id), "".join(e.text for e in part)

    for name, pieces in works:
        texts = [p for p in pieces if p]
        if not texts:
            continue
        if pool:
            texts[0] = "\n" + texts[0]
        pool += [_Entry(t, len(t.encode("utf-8"))) for t in texts]
        names.append(name)
        if sum(e.size for e in pool) >= min_bytes:
            yield from emit()
            names, pool = [], []
    if pool:
        yield from emit()


@dataclass(frozen=True)
class CorpusSet:
    """A named document set: the Debian packages it reads and which files of them it keeps
    (`suffixes`, matched after `.gz` is dropped; None keeps every text file), or, where `works`
    is given, the works it names in each package (`works_documents` makes the documents; ids
    start with the package name)."""

    name: str
    packages: tuple[str, ...]
    suffixes: tuple[str, ...] | None
    description: str
    works: Callable[[Package], Iterable[tuple[str, Sequence[str]]]] | None = None

    def documents(
        self,
        packages: Sequence[Package],
        *,
        min_bytes: int = MIN_DOC_BYTES,
        max_bytes: int = MAX_DOC_BYTES,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> Iterator[tuple[str, str]]:
        """`(doc_id, text)` of every package, in the order given, each read as `package_trees`
        says and cut as `tree_documents` says, or by its works (class doc)."""
        for package in packages:
            if self.works is not None:
                yield from works_documents(
                    self.works(package), package.name, min_bytes=min_bytes, max_bytes=max_bytes
                )
                continue
            for prefix, tree in package_trees(package, max_file_bytes=max_file_bytes):
                yield from tree_documents(
                    tree,
                    prefix,
                    suffixes=self.suffixes,
                    min_bytes=min_bytes,
                    max_bytes=max_bytes,
                    max_file_bytes=max_file_bytes,
                )


def _directory_hash(doc_id: str, salt: str = "") -> int:
    directory = _PART.sub("", doc_id)
    return int.from_bytes(hashlib.sha256((salt + directory).encode("utf-8")).digest()[:8], "big")


def sampled(doc_id: str, fraction: float) -> bool:
    """True for a stable `fraction` of directories, drawn independently of the split (another
    hash), so a sample spreads over every package and keeps a directory's parts together."""
    if not 0.0 < fraction <= 1.0:
        raise InvalidValueError(f"sample fraction must lie in (0, 1], got {fraction}")
    return _directory_hash(doc_id, "sample:") < fraction * 2**64


def split_of(doc_id: str, val_fraction: float) -> str:
    """ "val" for a stable `val_fraction` of directories (sha256 of the id without `#n`), else
    "train"."""
    if not 0.0 <= val_fraction < 1.0:
        raise InvalidValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    return "val" if _directory_hash(doc_id) < val_fraction * 2**64 else "train"
