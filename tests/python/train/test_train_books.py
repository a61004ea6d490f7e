"""The `books` set (fot_mem.train.books, corpus.works_documents), on real files cut from its
Debian packages (tests/python/fixtures/books, see its README): R lazy-load data and SWORD zText
modules, read in pure Python."""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import struct
import zlib
from pathlib import Path

import fot_mem
import pytest
from fot_mem.cli import data
from fot_mem.data import shards
from fot_mem.train import books, corpus, debian, rdata, sets

pytest.importorskip("rdata")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "books"
AUSTEN = FIXTURES / "r-cran-janeaustenr/usr/lib/R/site-library/janeaustenr/data/Rdata"
MOBY = FIXTURES / "r-cran-tokenizers/usr/lib/R/site-library/tokenizers/data/Rdata"
NOVELS = [
    "emma",
    "mansfieldpark",
    "northangerabbey",
    "persuasion",
    "prideprejudice",
    "sensesensibility",
]


def package(name: str, root: Path) -> debian.Package:
    return debian.Package(name=name, version="0-test", deb=root / "none.deb", root=root)


def sword_root(tmp_path: Path, name: str) -> Path:
    """A package root holding the fixture module, unpacked into `usr/share/sword`."""
    root = tmp_path / name
    base = root / "usr" / "share" / "sword"
    shutil.copytree(FIXTURES / name, base)
    for gz in base.rglob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    return root


def module_dir(root: Path) -> Path:
    (module,) = books.sword_modules(root)
    return module.path


def works(root: Path) -> dict[str, str]:
    return {name: "".join(pieces) for name, pieces in books.package_works(package("p", root))}


# --- R lazy-load data ----------------------------------------------------------------------------


def test_austen_novels_are_read_from_the_lazy_load_database():
    texts = dict(books.lazy_load_texts(AUSTEN, min_bytes=1))
    assert list(texts) == NOVELS  # index order
    pride = "\n".join(texts["prideprejudice"])
    assert pride.startswith("PRIDE AND PREJUDICE\n\nBy Jane Austen")
    assert "It is a truth universally acknowledged, that a single man in possession" in pride
    assert len(texts["emma"]) == 120  # the fixture's cut: one line per element
    assert texts["emma"][0] == "EMMA"
    # The real novels are far above the default minimum; the fixture's cut ones are not.
    assert list(books.lazy_load_texts(AUSTEN)) == []


def test_a_book_in_one_string_is_split_at_its_lines():
    ((name, lines),) = books.lazy_load_texts(MOBY, min_bytes=1)
    assert name == "mobydick"
    assert lines[0] == "The Project Gutenberg EBook of Moby Dick; or The Whale, by Herman Melville"
    assert not any("\r" in line or "\ufeff" in line for line in lines)  # no CR, no BOM


def test_r_package_works_and_documents(tmp_path, monkeypatch):
    monkeypatch.setattr(rdata, "MIN_TEXT_BYTES", 1)
    root = FIXTURES / "r-cran-janeaustenr"
    got = works(root)
    assert list(got) == NOVELS
    assert got["persuasion"].startswith("Persuasion\n") and got["persuasion"].endswith("\n")
    cset = sets.SETS["books"]
    pkg = package("r-cran-janeaustenr", root)
    docs = list(cset.documents([pkg], min_bytes=8 * 1024))
    ids = [d for d, _ in docs]
    assert docs == list(cset.documents([pkg], min_bytes=8 * 1024)), "stable ids and texts"
    assert all(i.startswith("r-cran-janeaustenr/") for i in ids)
    assert "".join(t for _, t in docs).count("It is a truth universally acknowledged") == 1


def damaged_copy(tmp_path: Path, src: Path) -> Path:
    for suffix in (".rdb", ".rdx"):
        shutil.copy(src.with_suffix(suffix), tmp_path / f"Rdata{suffix}")
    return tmp_path / "Rdata"


def test_damaged_r_data_raises_store_corrupt(tmp_path):
    stem = damaged_copy(tmp_path, AUSTEN)
    rdx, rdb = stem.with_suffix(".rdx"), stem.with_suffix(".rdb")
    good_rdx, good_rdb = rdx.read_bytes(), rdb.read_bytes()

    rdx.write_bytes(good_rdx[: len(good_rdx) // 2])  # truncated gzip
    with pytest.raises(fot_mem.StoreCorruptError, match=r"Rdata\.rdx"):
        list(books.lazy_load_texts(stem, min_bytes=1))
    rdx.write_bytes(gzip.compress(b"X\n\0\0\0\3garbage"))  # gzip of no R object
    with pytest.raises(fot_mem.StoreCorruptError, match=r"Rdata\.rdx"):
        list(books.lazy_load_texts(stem, min_bytes=1))

    rdx.write_bytes(good_rdx)
    rdb.write_bytes(good_rdb[:100])  # objects lie past the end
    with pytest.raises(fot_mem.StoreCorruptError, match=r"'emma'.*outside the file"):
        list(books.lazy_load_texts(stem, min_bytes=1))
    broken = bytearray(good_rdb)
    broken[10:20] = b"\xff" * 10  # inside emma's zlib stream
    rdb.write_bytes(bytes(broken))
    with pytest.raises(fot_mem.StoreCorruptError, match=r"'emma'.*cannot decompress"):
        list(books.lazy_load_texts(stem, min_bytes=1))


def test_every_r_compression_code_is_inflated():
    payload = b"X\n serialized object"
    size = struct.pack(">I", len(payload))
    assert rdata._inflate(size + zlib.compress(payload), 1, "t") == payload
    assert rdata._inflate(size + b"2" + bz2.compress(payload), 2, "t") == payload
    assert rdata._inflate(size + b"Z" + lzma.compress(payload), 3, "t") == payload
    assert rdata._inflate(size + b"0" + payload, 3, "t") == payload
    with pytest.raises(fot_mem.InvalidValueError, match="unknown R compression"):
        rdata._inflate(size + b"Z" + lzma.compress(payload), 2, "t")
    with pytest.raises(fot_mem.StoreCorruptError, match="header says"):
        rdata._inflate(struct.pack(">I", 3) + zlib.compress(payload), 1, "t")
    with pytest.raises(fot_mem.StoreCorruptError, match="truncated"):
        rdata._inflate(b"\0\0", 1, "t")


# --- SWORD zText ---------------------------------------------------------------------------------


def test_kjv_books_verses_and_plain_text(tmp_path):
    got = works(sword_root(tmp_path, "sword-text-kjv"))
    assert list(got) == ["Genesis", "Obadiah", "John", "III John", "Jude"]  # canonical order
    genesis = got["Genesis"]
    assert genesis.startswith("The First Book of Moses, called Genesis\n\n1:1 In the beginning")
    assert "1:1 In the beginning God created the heaven and the earth.\n" in genesis
    assert "\n\n2:1 Thus the heavens and the earth were finished" in genesis  # chapters apart
    assert "11:35 Jesus wept.\n" in got["John"]
    assert "1:1 The elder unto the wellbeloved Gaius" in got["III John"]
    for text in got.values():
        assert "<" not in text and ">" not in text and "strong:" not in text
    assert "Heb. between the light" not in genesis  # footnotes (Genesis 1:4) are dropped


def test_web_reads_with_the_nrsva_versification(tmp_path):
    got = works(sword_root(tmp_path, "sword-text-web"))
    assert list(got) == ["Genesis", "Tobit", "III John"]
    assert got["Genesis"].startswith("Preface to the World English Bible\n")
    assert "1:1 In the beginning, God created the heavens and the earth.\n" in got["Genesis"]
    assert "1:1 The book of the words of Tobit" in got["Tobit"]
    assert "God\u2019s" in got["Genesis"]  # UTF-8 kept


def test_plain_text_strips_markup():
    osis = (
        '<div type="x-milestone" subType="x-preverse" sID="pv1"/><title type="psalm">A Psalm'
        '</title><w lemma="strong:H0430">God</w><note placement="foot">a note</note><w>said'
        '</w>, &ldquo;<transChange type="added">Let</transChange>&rdquo;<note n="b">x</note>.'
        "<l/>end<d"
    )
    assert books.plain_text(osis, "OSIS") == "A Psalm\nGod said, \u201cLet\u201d. end"
    assert books.plain_text("In the <FI>beginning<Fi><RF>note<Rf> God<WH0430>", "GBF") == (
        "In the beginning God"
    )
    assert books.plain_text("  plain \n\n text ", "Plain") == "plain\ntext"
    with pytest.raises(fot_mem.InvalidValueError, match="TEI"):
        books.plain_text("x", "TEI")


def test_damaged_sword_module_raises_store_corrupt(tmp_path):
    directory = module_dir(root := sword_root(tmp_path, "sword-text-kjv"))
    bzv, bzz = directory / "nt.bzv", directory / "nt.bzz"
    good_bzv, good_bzz = bzv.read_bytes(), bzz.read_bytes()

    bzv.write_bytes(good_bzv[:-10])  # one entry short of the versification
    with pytest.raises(fot_mem.StoreCorruptError, match=r"nt\.bzv: 8245 entries.*KJV.*8246"):
        works(root)
    bzv.write_bytes(good_bzv[:-3])
    with pytest.raises(fot_mem.StoreCorruptError, match="not a whole number of entries"):
        works(root)
    bzv.write_bytes(good_bzv)
    bzz.write_bytes(good_bzz[:200] + b"\0" * 64 + good_bzz[264:])  # bad zlib in a block
    with pytest.raises(fot_mem.StoreCorruptError, match=r"nt\.bzz block \d: cannot decompress"):
        works(root)
    bzz.write_bytes(good_bzz[: len(good_bzz) // 2])
    with pytest.raises(fot_mem.StoreCorruptError, match="outside the file"):
        works(root)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("CompressType=ZIP", None),
        ("CompressType=LZSS", "CompressType=LZSS is not supported"),
        ("Versification=Synodal", "Versification=Synodal is not supported"),
        ("ModDrv=zText4", "ModDrv=zText4 is not supported"),
        ("SourceType=TEI", "SourceType=TEI is not supported"),
    ],
)
def test_unsupported_sword_formats_are_refused(tmp_path, line, message):
    root = sword_root(tmp_path, "sword-text-kjv")
    (conf,) = (root / "usr/share/sword/mods.d").glob("*.conf")
    key = line.split("=")[0]
    lines = [x for x in conf.read_text().splitlines() if not x.startswith(key + "=")]
    conf.write_text("\n".join([*lines, line]) + "\n")
    if message is None:
        assert works(root)
    else:
        with pytest.raises(fot_mem.InvalidValueError, match=message):
            works(root)


def test_versification_tables_match_swords_index_lengths():
    # Entries per testament of the real modules' .bzv files (10 bytes an entry).
    kjv_ot, kjv_nt = books.VERSIFICATIONS["KJV"]
    assert (books._entries_of(kjv_ot), books._entries_of(kjv_nt)) == (24115, 8246)
    nrsva_ot, nrsva_nt = books.VERSIFICATIONS["NRSVA"]
    assert (books._entries_of(nrsva_ot), books._entries_of(nrsva_nt)) == (31027, 8248)
    assert (len(kjv_ot), len(kjv_nt), len(nrsva_ot)) == (39, 27, 56)
    assert sum(sum(b.chapters) for b in kjv_ot + kjv_nt) == 31102  # the KJV's verse count


def test_package_without_books_is_refused(tmp_path):
    with pytest.raises(fot_mem.InvalidValueError, match="neither R lazy-load data nor SWORD"):
        list(books.package_works(package("empty", tmp_path)))


# --- works into documents ------------------------------------------------------------------------


def test_works_gather_until_min_bytes_and_split_above_max_bytes():
    def work(name: str, n: int) -> tuple[str, list[str]]:
        return name, [f"{name} {i:03d} " + "x" * 88 + "\n" for i in range(n)]  # 100 B a piece

    listed = [work("A", 30), work("B", 5), work("C", 4), work("D", 2), work("E", 1)]
    docs = list(corpus.works_documents(listed, "pkg", min_bytes=1000, max_bytes=1500))
    assert [d for d, _ in docs] == ["pkg/A#0", "pkg/A#1", "pkg/B..D", "pkg/E"]
    text = dict(docs)
    assert text["pkg/A#0"] + text["pkg/A#1"] == "".join(work("A", 30)[1])  # cut at pieces
    assert text["pkg/B..D"].startswith("B 000") and "\nC 000" in text["pkg/B..D"]
    assert text["pkg/B..D"].count("\n\n") == 2  # a blank line between works
    assert all(corpus.split_of(d, 0.5) == corpus.split_of("pkg/A", 0.5) for d in ("pkg/A#1",))
    with pytest.raises(fot_mem.InvalidValueError):
        list(corpus.works_documents(listed, "pkg", min_bytes=10, max_bytes=5))


def test_books_set_is_registered():
    cset = sets.SETS["books"]
    assert cset.packages == (
        "r-cran-janeaustenr",
        "r-cran-tokenizers",
        "sword-text-kjv",
        "sword-text-web",
    )
    assert cset.works is books.package_works


# --- the real set --------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_books_build(tmp_path):
    """Fetches the four packages through apt (into the default cache, so once) and builds."""
    if shutil.which("apt-get") is None or not all(
        debian.available(p) for p in sets.SETS["books"].packages
    ):
        pytest.skip("needs apt with the books set's packages")
    out = tmp_path / "out"
    assert data.main(["build", "--set", "books", "--out", str(out), "--tokenizer", "bytes"]) == 0
    index = shards.read_index(out)
    assert set(index["metadata"]["packages"]) == set(sets.SETS["books"].packages)
    ids = [d["id"] for s in index["splits"].values() for d in s["documents"]]
    assert {f"r-cran-janeaustenr/{n}" for n in NOVELS} | {"r-cran-tokenizers/mobydick"} <= set(ids)
    assert "sword-text-kjv/Genesis" in ids and "sword-text-web/Psalms" in ids
    for name in index["splits"]:
        ds = shards.TokenDataset(out, name)
        if "r-cran-janeaustenr/prideprejudice" in ds.ids:
            text = ds[ds.ids.index("r-cran-janeaustenr/prideprejudice")].astype("uint8").tobytes()
            assert b"It is a truth universally acknowledged" in text
    assert sum(len(s["documents"]) for s in index["splits"].values()) >= 60
