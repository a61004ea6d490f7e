"""Training data from Debian packages (fot_mem.train.debian / corpus / shards / data), offline.

A tiny .deb is built from real Go 1.19 sources (tests/python/fixtures/debian) with
`dpkg-deb --build`
and put in the package cache, so `fetch` never calls apt; where apt is exercised a fake
`apt-get` on PATH stands in for it. Documents are cut with a 2 KiB minimum so the ~10 KiB fixture
yields several."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import fot_mem
import numpy as np
import pytest
from fot_mem.cli import data
from fot_mem.data import shards
from fot_mem.train import corpus, debian, sets

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "debian" / "tree"
FIXTURE_ROOT = FIXTURE / "usr" / "share" / "go-1.19" / "src"  # where its contents branch
NAME = "fixture-go"
VERSION = "1.19.8-2~test1"
MIN = 2048
HEADER = re.compile(r"^# ===== (.+) =====\n", re.MULTILINE)

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")


def fixture_files() -> dict[str, str]:
    return {
        p.relative_to(FIXTURE_ROOT).as_posix(): p.read_text()
        for p in sorted(FIXTURE_ROOT.rglob("*"))
        if p.is_file()
    }


def parse(text: str) -> list[tuple[str, str]]:
    """(path, file text) of a document, by its headers."""
    heads = list(HEADER.finditer(text))
    assert heads and heads[0].start() == 0, "a document starts with a header"
    ends = [h.start() for h in heads[1:]] + [len(text)]
    return [(h.group(1), text[h.end() : end]) for h, end in zip(heads, ends)]


def build_deb(
    tmp: Path,
    dest_dir: Path,
    *,
    name: str = NAME,
    version: str = VERSION,
    extra: dict[str, bytes] | None = None,
    remove: tuple[str, ...] = (),
    links: dict[str, str] | None = None,
) -> Path:
    """A .deb of the fixture tree, plus `extra` files, less `remove`d ones, with `links`
    (path -> target) added, named as apt names its downloads."""
    root = tmp / f"build-{name}"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(FIXTURE, root)
    for rel, content in (extra or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    for rel in remove:
        (root / rel).unlink()
    for rel, target in (links or {}).items():
        (root / rel).symlink_to(target)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: fot_mem tests <tests@example.org>\nDescription: test fixture\n"
    )
    dest_dir.mkdir(parents=True, exist_ok=True)
    deb = dest_dir / f"{name}_{version}_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)],
        check=True,
        capture_output=True,
    )
    return deb


@pytest.fixture
def fake_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`fake_apt(script, tool="apt-get")` puts a `tool` running that shell script first on PATH;
    it leaves `TOOL.called` in the bin directory when run (the path returned)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")

    def install(script: str, tool: str = "apt-get") -> Path:
        path = bindir / tool
        path.write_text(f"#!/bin/sh\ntouch '{bindir}/{tool}.called'\n{script}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
        return bindir / f"{tool}.called"

    return install


def docs_of(package: debian.Package, **kw) -> list[tuple[str, str]]:
    cset = corpus.CorpusSet("fixture", (package.name,), None, "test")
    return list(cset.documents([package], min_bytes=MIN, **kw))


# --- debian.fetch --------------------------------------------------------------------------------


@needs_dpkg
def test_fetch_uses_the_cached_deb_and_extracts_once(tmp_path, fake_apt):
    called = fake_apt("exit 1")
    cache = tmp_path / "cache"
    build_deb(tmp_path, cache)
    (package,) = debian.fetch([NAME], cache)
    assert not called.exists(), "a cached .deb must not be downloaded again"
    assert (package.name, package.version) == (NAME, VERSION)
    assert package.root == cache / "extract" / NAME
    ring = package.root / "usr/share/go-1.19/src/container/ring/ring.go"
    assert ring.read_bytes() == (FIXTURE_ROOT / "container/ring/ring.go").read_bytes()
    # A second fetch keeps the extraction (a file put there survives) ...
    (package.root / "sentinel").write_text("x")
    assert debian.fetch([NAME], cache) == [package]
    assert (package.root / "sentinel").exists()
    # ... a new .deb of the package replaces it.
    newer = build_deb(tmp_path, cache, version=VERSION + "a")
    os.utime(newer, (2e9, 2e9))  # the newest download is the one used
    (again,) = debian.fetch([NAME], cache)
    assert (again.deb, again.version) == (newer, VERSION + "a")
    assert not (again.root / "sentinel").exists()


@needs_dpkg
def test_fetch_downloads_with_apt_get_into_the_cache(tmp_path, fake_apt):
    deb = build_deb(tmp_path, tmp_path / "archive")
    called = fake_apt(f"cp '{deb}' .")  # apt-get download writes into its working directory
    cache = tmp_path / "cache"
    (package,) = debian.fetch([NAME], cache)
    assert called.exists()
    assert package.deb == cache / deb.name and package.deb.read_bytes() == deb.read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == sorted([deb.name, "extract"])


def test_fetch_errors_name_the_package_and_the_stderr(tmp_path, fake_apt):
    fake_apt("echo 'E: Unable to locate package nosuch-pkg' >&2; exit 100")
    with pytest.raises(fot_mem.InvalidValueError, match=r"nosuch-pkg.*Unable to locate package"):
        debian.fetch(["nosuch-pkg"], tmp_path / "cache")
    fake_apt("echo 'E: Failed to fetch http://deb.debian.org/x.deb  404' >&2; exit 100")
    with pytest.raises(OSError, match=r"some-pkg.*Failed to fetch") as info:
        debian.fetch(["some-pkg"], tmp_path / "cache")
    assert isinstance(info.value, fot_mem.StoreIOError)
    assert not list((tmp_path / "cache").glob(".download-*")), "scratch directories are removed"
    with pytest.raises(fot_mem.InvalidValueError, match="not a Debian package name"):
        debian.fetch(["../etc"], tmp_path / "cache")


def test_available_asks_apt_cache(fake_apt):
    fake_apt(
        '[ "$2" = known ] && echo "Package: known" || { echo "E: No packages found" >&2; '
        "exit 100; }",
        tool="apt-cache",
    )
    assert debian.available("known") and not debian.available("unknown")


@needs_dpkg
def test_fetch_of_a_damaged_deb_raises_with_dpkg_stderr(tmp_path, fake_apt):
    fake_apt("exit 1")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"{NAME}_{VERSION}_all.deb").write_bytes(b"!<arch>\nnot really a deb")
    with pytest.raises(fot_mem.StoreIOError, match=rf"{NAME}: `dpkg-deb -f .*dpkg-deb"):
        debian.fetch([NAME], cache)


# --- corpus: the fixture package -----------------------------------------------------------------


@needs_dpkg
def test_fixture_documents_hold_every_file_once(tmp_path, fake_apt):
    fake_apt("exit 1")
    src = "usr/share/go-1.19/src"
    utf16 = (FIXTURE / src / "unicode/utf16/utf16.go").read_bytes()
    extra = {
        f"{src}/errors/blob.bin": b"\x7fELF\0\0binary",  # NUL: not text
        f"{src}/errors/latin1.txt": "caf\xe9\n".encode("latin-1"),  # not UTF-8
        f"{src}/errors/empty.go": b"",
        # Debian gzips documentation: read decompressed, under the name without .gz.
        f"{src}/unicode/utf16/utf16.go.gz": gzip.compress(utf16),
    }
    build_deb(
        tmp_path,
        tmp_path / "cache",
        extra=extra,
        remove=(f"{src}/unicode/utf16/utf16.go",),  # only the .gz, as dh_compress leaves it
        links={f"{src}/errors/link.go": "errors.go"},  # never followed
    )

    (package,) = debian.fetch([NAME], tmp_path / "cache")
    docs = docs_of(package)
    assert [d for d, _ in docs] == [
        f"{NAME}/container/ring",
        f"{NAME}/errors",
        f"{NAME}/unicode/utf16",
        NAME,  # the root keeps what the small container/heap and container/list left over
    ]
    assert docs == docs_of(package), "documents are deterministic"
    seen = [pair for _, text in docs for pair in parse(text)]
    assert sorted(p for p, _ in seen) == sorted(fixture_files()), "every file exactly once"
    assert dict(seen) == fixture_files()  # exact text (the fixture files all end in a newline)
    assert [p for p, _ in parse(docs[-1][1])] == [
        "container/heap/example_intheap_test.go",
        "container/list/example_test.go",
    ]
    for doc_id, text in docs[:-1]:
        assert len(text.encode()) >= MIN, doc_id
        directory = doc_id.removeprefix(f"{NAME}/")
        assert all(p.startswith(directory + "/") for p, _ in parse(text))


@needs_dpkg
def test_source_tarball_packages_are_read_from_the_tarball(tmp_path, fake_apt):
    fake_apt("exit 1")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        tar.add(FIXTURE_ROOT, arcname="fixsrc-1.0")
        evil = tarfile.TarInfo("../evil.go")  # outside the tree: never written
        evil.size = 5
        tar.addfile(evil, io.BytesIO(b"evil\n"))
        link = tarfile.TarInfo("fixsrc-1.0/errors/link.go")
        link.type, link.linkname = tarfile.SYMTYPE, "errors.go"
        tar.addfile(link)
    build_deb(
        tmp_path,
        tmp_path / "cache",
        name="fixsrc",
        extra={"usr/src/fixsrc-1.0.tar.xz": buf.getvalue()},
    )
    plain = build_deb(tmp_path, tmp_path / "plain")
    os.replace(plain, tmp_path / "cache" / plain.name)
    tarred, untarred = debian.fetch(["fixsrc", NAME], tmp_path / "cache")

    trees = corpus.package_trees(tarred)
    unpacked = tmp_path / "cache" / "extract" / "fixsrc.tarballs" / "fixsrc-1.0"
    assert trees == [("fixsrc", unpacked / "fixsrc-1.0")]
    assert not list(tmp_path.rglob("evil.go"))
    expected = [(i.replace(NAME, "fixsrc", 1), t) for i, t in docs_of(untarred)]
    assert docs_of(tarred) == expected  # the package tree (usr/share/go-1.19/...) is not read
    # Unpacked once: a second call leaves the tree alone.
    (unpacked / "sentinel").write_text("x")
    corpus.package_trees(tarred)
    assert (unpacked / "sentinel").exists()


# --- corpus: subtree grouping on synthetic trees -------------------------------------------------


def write_tree(root: Path, files: dict[str, bytes | str]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)


def text_of(size: int, tag: str) -> str:
    """`size` bytes of lines starting with `tag`, ending in a newline."""
    line = f"{tag} " + "x" * 60 + "\n"
    return (line * (size // len(line) + 1))[: size - 1] + "\n"


def test_subtrees_group_bottom_up_and_split_large_directories(tmp_path):
    files = {
        "a/x.c": text_of(2500, "ax"),
        "a/b/y.c": text_of(500, "aby"),  # a/b is small: its files join a's document
        "a/b/z.c": text_of(600, "abz"),
        **{f"big/f{i}.c": text_of(1000, f"big{i}") for i in range(10)},
        "c/w.c": text_of(100, "cw"),  # too small anywhere: ends in the root's document
    }
    write_tree(tmp_path, files)
    docs = list(corpus.tree_documents(tmp_path, "p", min_bytes=2048, max_bytes=4096))
    assert [d for d, _ in docs] == ["p/a", "p/big#0", "p/big#1", "p/big#2", "p"]
    paths = {d: [p for p, _ in parse(t)] for d, t in docs}
    assert paths["p/a"] == ["a/x.c", "a/b/y.c", "a/b/z.c"]
    assert paths["p"] == ["c/w.c"]
    big = [p for d in ("p/big#0", "p/big#1", "p/big#2") for p in paths[d]]
    assert big == [f"big/f{i}.c" for i in range(10)], "parts follow file order, nothing lost"
    sizes = [len(t.encode()) for d, t in docs if d.startswith("p/big#")]
    assert max(sizes) <= 4096 and min(sizes) >= 2048
    assert [len(paths[f"p/big#{i}"]) for i in range(3)] == [3, 4, 3]  # near-equal, not greedy
    for _, text in docs:
        for path, body in parse(text):
            assert body == files[path]


def test_text_filter_and_suffixes(tmp_path):
    ok = text_of(300, "tex")
    write_tree(
        tmp_path,
        {
            "d/a.tex": ok,
            "d/b.tex.gz": gzip.compress(ok.encode()),
            "d/c.tex": ok,
            "d/c.tex.gz": gzip.compress(b"shadowed by c.tex"),
            "d/nul.tex": "a\0b",
            "d/latin1.tex": "caf\xe9".encode("latin-1"),
            "d/huge.tex": text_of(5000, "huge"),
            "d/empty.tex": "",
            "d/broken.tex.gz": b"not gzip",
            "d/notes.txt": ok,  # not a kept suffix
            "d/nonl.dtx": "no final newline",
        },
    )
    (tmp_path / "d" / "link.tex").symlink_to("a.tex")
    (tmp_path / "e").symlink_to("d")
    docs = list(
        corpus.tree_documents(
            tmp_path, "p", suffixes=(".tex", ".dtx"), min_bytes=64, max_file_bytes=4096
        )
    )
    assert [d for d, _ in docs] == ["p/d"]
    got = parse(docs[0][1])
    assert [p for p, _ in got] == ["d/a.tex", "d/b.tex", "d/c.tex", "d/nonl.dtx"]
    assert dict(got)["d/b.tex"] == ok
    assert dict(got)["d/nonl.dtx"] == "no final newline\n"  # the next header starts a line
    with pytest.raises(fot_mem.InvalidValueError):
        list(corpus.tree_documents(tmp_path, "p", min_bytes=10, max_bytes=5))


def test_split_cuts_balance_and_merge_a_small_tail():
    entries = [corpus._Entry("x" * s, s) for s in (3000, 3000, 3000, 100)]
    parts = corpus._split(entries, max_bytes=4096, min_bytes=2048)
    # 9100 bytes -> 3 parts by share.
    assert [[e.size for e in p] for p in parts] == [[3000], [3000], [3000, 100]]
    # The cap would leave 100 bytes alone after two full parts: they join the last part.
    tail = corpus._split(
        [corpus._Entry("x" * s, s) for s in (4000, 4000, 100)], max_bytes=4096, min_bytes=2048
    )
    assert [[e.size for e in p] for p in tail] == [[4000], [4000, 100]]
    one = corpus._split([corpus._Entry("x", 5000)], max_bytes=4096, min_bytes=2048)
    assert [[e.size for e in p] for p in one] == [[5000]]  # a file is never cut


def test_split_is_stable_and_keeps_directories_together():
    # Pinned: the hash may never change, or builds would move documents between splits.
    ids = [f"pkg/dir{i}" for i in range(2000)]
    val = [i for i in ids if corpus.split_of(i, 0.05) == "val"]
    assert val[:3] == ["pkg/dir28", "pkg/dir40", "pkg/dir77"]
    assert 0.03 < len(val) / len(ids) < 0.07
    for fraction in (0.05, 0.3, 0.7):
        for i in ids[:200]:
            splits = {corpus.split_of(f"{i}#{n}", fraction) for n in range(4)}
            assert splits == {corpus.split_of(i, fraction)}
    assert {corpus.split_of(i, 0.0) for i in ids} == {"train"}
    with pytest.raises(fot_mem.InvalidValueError):
        corpus.split_of("x", 1.0)


def test_registered_sets():
    assert {"code", "latex", "proofs"} <= set(sets.SETS)
    assert sets.SETS["code"].packages[0] == "linux-source-6.1"
    assert len(sets.SETS["latex"].packages) == 10
    assert all(p.startswith("texlive-") and p.endswith("-doc") for p in sets.SETS["latex"].packages)


def test_the_mix_set_reads_each_package_as_its_own_set(monkeypatch):
    mix = sets.SETS["mix"]
    assert isinstance(mix, sets.MixSet)
    parts = {part.name for part in mix.parts}
    assert parts == {"code-many", "books", "latex", "proofs"}
    assert len(set(mix.packages)) == len(mix.packages) > 30  # every package once
    assert "libpython3.11-stdlib" in mix.packages and "r-cran-janeaustenr" in mix.packages
    read: list[tuple[str, str]] = []

    def documents(self, packages, **options):
        read.append((self.name, packages[0].name))
        yield f"{packages[0].name}/doc", f"{self.name} {options}"

    monkeypatch.setattr(corpus.CorpusSet, "documents", documents)

    class Pkg:
        def __init__(self, name: str) -> None:
            self.name = name

    got = list(mix.documents([Pkg("sword-text-kjv"), Pkg("rust-src")], min_bytes=5))
    assert read == [("books", "sword-text-kjv"), ("code-many", "rust-src")]
    assert got == [
        ("sword-text-kjv/doc", "books {'min_bytes': 5}"),
        ("rust-src/doc", "code-many {'min_bytes': 5}"),
    ]


# --- shards -------------------------------------------------------------------------------------


def synthetic_docs() -> list[tuple[str, str]]:
    return [(f"pkg/d{i}", text_of(300 + 97 * i, f"doc{i} é") + "✓\n") for i in range(30)]


def test_shards_round_trip_the_exact_bytes(tmp_path):
    docs = synthetic_docs()
    split = lambda i: corpus.split_of(i, 0.3)  # noqa: E731
    index = shards.write_shards(
        docs, tmp_path / "out", "bytes", split, metadata={"set": "t"}, shard_bytes=4096
    )
    assert index["dtype"] == "uint16" and index["tokenizer"]["vocab_size"] == 256
    on_disk = json.loads((tmp_path / "out" / "index.json").read_text())
    assert on_disk["metadata"] == {"set": "t"} and on_disk["version"] == shards.FORMAT_VERSION
    train, val = (
        shards.TokenDataset(tmp_path / "out", "train"),
        shards.TokenDataset(tmp_path / "out", "val"),
    )
    assert len(train) + len(val) == len(docs) and len(val) > 0 and len(train) > len(val)
    assert len(index["splits"]["train"]["shards"]) > 2
    by_id = dict(docs)
    for ds, name in ((train, "train"), (val, "val")):
        assert ds.vocab_size == 256
        assert all(split(i) == name for i in ds.ids)
        assert ds.total_tokens == sum(len(by_id[i].encode()) for i in ds.ids)
        assert list(ds.lengths) == [len(by_id[i].encode()) for i in ds.ids]
        for n, doc_id in enumerate(ds.ids):
            tokens = ds[n]
            assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16  # a view, no copy
            assert tokens.astype(np.uint8).tobytes().decode() == by_id[doc_id]
        assert np.array_equal(ds[-1], ds[len(ds) - 1])
        with pytest.raises(IndexError):
            ds[len(ds)]
    # Documents are whole in one shard and follow each other.
    for s in index["splits"].values():
        for a, b in zip(s["documents"], s["documents"][1:]):
            assert b["offset"] == (a["offset"] + a["length"] if b["shard"] == a["shard"] else 0)
    with pytest.raises(fot_mem.InvalidValueError, match="already holds a build"):
        shards.write_shards(docs, tmp_path / "out", "bytes", "train")
    shards.write_shards(docs[:2], tmp_path / "out", "bytes", "train", overwrite=True)
    assert len(shards.TokenDataset(tmp_path / "out", "train")) == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["index.json", "train-0000.bin"]


def test_write_shards_refuses_duplicate_ids(tmp_path):
    with pytest.raises(fot_mem.InvalidValueError, match="appears twice"):
        shards.write_shards([("a", "x"), ("a", "y")], tmp_path, "bytes", "train")


def test_token_dataset_validates_the_index(tmp_path):
    out = tmp_path / "out"
    shards.write_shards(synthetic_docs(), out, "bytes", "train", shard_bytes=4096)
    index_path = out / "index.json"
    good = index_path.read_text()

    with pytest.raises(fot_mem.InvalidValueError, match=r"no split 'val'.*\['train'\]"):
        shards.TokenDataset(out, "val")

    shard = out / "train-0001.bin"
    content = shard.read_bytes()
    shard.write_bytes(content[:-2])  # one token short
    with pytest.raises(fot_mem.StoreCorruptError, match=r"train-0001.bin has \d+ bytes.*truncated"):
        shards.TokenDataset(out, "train")
    shard.unlink()
    with pytest.raises(fot_mem.StoreCorruptError, match=r"train-0001\.bin is missing"):
        shards.TokenDataset(out, "train")
    shard.write_bytes(content)
    assert len(shards.TokenDataset(out, "train")) == 30

    index = json.loads(good)
    index["version"] = shards.FORMAT_VERSION + 1
    index_path.write_text(json.dumps(index))
    with pytest.raises(fot_mem.FormatVersionError, match="format version 2"):
        shards.TokenDataset(out, "train")

    index = json.loads(good)
    index["splits"]["train"]["documents"][3]["length"] += 10_000
    index_path.write_text(json.dumps(index))
    with pytest.raises(fot_mem.StoreCorruptError, match=r"pkg/d3\b.*outside its shard"):
        shards.TokenDataset(out, "train")

    index_path.write_text("{not json")
    with pytest.raises(fot_mem.StoreCorruptError, match="not readable JSON"):
        shards.TokenDataset(out, "train")
    index_path.unlink()
    with pytest.raises(FileNotFoundError, match=r"index\.json not found"):
        shards.TokenDataset(out, "train")


@pytest.mark.slow
def test_smollm2_tokenizer_shards(tmp_path):
    pytest.importorskip("gguf")
    pytest.importorskip("transformers")
    try:
        tok = shards.get_tokenizer("smollm2")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    docs = synthetic_docs()[:3]
    shards.write_shards(docs, tmp_path, tok, "train", progress=False)
    ds = shards.TokenDataset(tmp_path, "train")
    assert ds.vocab_size == 49152 and ds[0].dtype == np.uint16
    for i, (_, text) in enumerate(docs):
        assert tok.tokenizer.decode(ds[i].tolist()) == text  # type: ignore[attr-defined]
        assert len(ds[i]) < len(text.encode()) / 2  # a real subword vocabulary


# --- the CLI ------------------------------------------------------------------------------------


@needs_dpkg
def test_cli_build_and_info(tmp_path, fake_apt, monkeypatch, capsys):
    fake_apt("exit 1")
    build_deb(tmp_path, tmp_path / "cache")
    fixture_set = corpus.CorpusSet("fixture", (NAME, "missing-pkg"), None, "test")
    monkeypatch.setitem(sets.SETS, "fixture", fixture_set)
    monkeypatch.setattr(debian, "available", lambda name: name == NAME)
    out = tmp_path / "out"
    argv = ["build", "--set", "fixture", "--out", str(out), "--cache", str(tmp_path / "cache")]
    argv += ["--min-bytes", str(MIN), "--val-fraction", "0.5"]
    with pytest.warns(UserWarning, match="missing-pkg"):
        assert data.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"{NAME} {VERSION}" in printed and "MB of text" in printed
    index = shards.read_index(out)
    assert index["metadata"]["packages"] == {NAME: VERSION}
    assert index["metadata"]["set"] == "fixture"
    counts = {s: len(v["documents"]) for s, v in index["splits"].items()}
    assert sum(counts.values()) == 4
    assert counts == {
        s: sum(
            corpus.split_of(d, 0.5) == s
            for d in [f"{NAME}/container/ring", f"{NAME}/errors", f"{NAME}/unicode/utf16", NAME]
        )
        for s in counts
    }
    assert data.main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tokenizer bytes" in printed and f"package {NAME} {VERSION}" in printed
    with pytest.warns(UserWarning, match="missing-pkg"):
        assert data.main([*argv, "--max-docs", "1", "--overwrite"]) == 0
    assert sum(len(v["documents"]) for v in shards.read_index(out)["splits"].values()) == 1


def test_sample_is_stable_spread_and_keeps_directories_whole() -> None:
    ids = [f"pkg{p}/dir{d}#{part}" for p in range(3) for d in range(400) for part in range(2)]
    kept = [i for i in ids if corpus.sampled(i, 0.1)]
    assert kept == [i for i in ids if corpus.sampled(i, 0.1)]  # stable
    assert 0.06 < len(kept) / len(ids) < 0.14
    assert {i.split("/")[0] for i in kept} == {"pkg0", "pkg1", "pkg2"}  # every package
    dirs = {i.split("#")[0] for i in kept}
    assert len(kept) == 2 * len(dirs)  # both parts of each kept directory
    assert all(corpus.sampled(i, 1.0) for i in ids)
    with pytest.raises(fot_mem.InvalidValueError):
        corpus.sampled(ids[0], 0.0)
