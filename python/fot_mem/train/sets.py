"""The named data sets of `fot-mem data build --set NAME` (`SETS`): Debian packages and how
each is read (`corpus.CorpusSet`), and mixes of them (`MixSet`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from . import books
from .corpus import CorpusSet
from .debian import Package

__all__ = ["SETS", "MixSet"]


@dataclass(frozen=True)
class MixSet:
    """Several sets in one build: each package is read as the set it belongs to says. Document
    ids start with the package name, which `--mix-sources` deals slots by."""

    name: str
    parts: tuple[CorpusSet, ...]
    description: str

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(p for part in self.parts for p in part.packages)

    def documents(self, packages: Sequence[Package], **options: int) -> Iterator[tuple[str, str]]:
        owner = {name: part for part in self.parts for name in part.packages}
        for package in packages:
            yield from owner[package.name].documents([package], **options)


# Code in many languages, each package its own source (issue 18: crossbatch negatives from
# one source tree share headers and identifiers with the positive, and teach little).
MANY_CODE = CorpusSet(
    "code-many",
    (
        "libpython3.11-stdlib",
        "perl-modules-5.36",
        "libruby3.1",
        "tcl8.6",
        "guile-3.0-libs",
        "erlang-src",
        "golang-1.19-src",
        "rust-src",
    ),
    None,
    "the standard libraries of Python 3.11, Perl 5.36, Ruby 3.1, Tcl 8.6, Guile 3.0, Erlang 25, "
    "Go 1.19 and Rust 1.63, each package a source",
)

SETS: dict[str, CorpusSet | MixSet] = {
    s.name: s
    for s in (
        MANY_CODE,
        CorpusSet(
            "code",
            ("linux-source-6.1", "golang-1.19-src", "rust-src"),
            None,
            "the Linux 6.1 kernel, Go 1.19's and Rust 1.63's standard library sources",
        ),
        # Ten of bookworm's eleven texlive-*-doc packages (texlive-latex-extra-doc, 593 MB, is
        # left out); their LaTeX sources are mostly gzipped.
        CorpusSet(
            "latex",
            (
                "texlive-latex-base-doc",
                "texlive-latex-recommended-doc",
                "texlive-fonts-recommended-doc",
                "texlive-fonts-extra-doc",
                "texlive-metapost-doc",
                "texlive-pictures-doc",
                "texlive-pstricks-doc",
                "texlive-humanities-doc",
                "texlive-publishers-doc",
                "texlive-science-doc",
            ),
            (".tex", ".dtx", ".ltx"),
            "LaTeX sources of TeX Live's package documentation",
        ),
        CorpusSet(
            "proofs",
            (
                "libcoq-stdlib",
                "libcoq-hott",
                "libcoq-unimath",
                "libcoq-iris",
                "libcoq-stdpp",
                "libcoq-corn",
                "libcoq-math-classes",
                "libcoq-mathcomp-ssreflect",
                "libcoq-mathcomp-algebra",
                "libcoq-mathcomp-analysis",
                "libcoq-flocq",
                "libcoq-coquelicot",
                "hol-light",
            ),
            (".v", ".ml"),
            "Coq libraries (.v) and HOL Light (.ml)",
        ),
        CorpusSet(
            "books",
            ("r-cran-janeaustenr", "r-cran-tokenizers", "sword-text-kjv", "sword-text-web"),
            None,
            "the paper's PG-19, weakly: Jane Austen's six novels, Moby Dick, the KJV and WEB "
            "Bibles by book",
            works=books.package_works,
        ),
    )
}
SETS["mix"] = MixSet(
    "mix",
    (MANY_CODE, SETS["books"], SETS["latex"], SETS["proofs"]),  # type: ignore[arg-type]
    "code in eight languages, books, LaTeX and proofs: unrelated sources for crossbatch's "
    "negatives (build it with --sample to balance the larger packages)",
)
