"""Command line: build a token-shard data set from Debian packages, or describe one.

    python -m fot_mem.train.data build --set code --out data/code --tokenizer bytes
    python -m fot_mem.train.data info data/code

Invariant: a build is a pure function of the set's packages at the versions fetched (recorded in
the index's metadata with the options), the tokenizer and the options; it runs offline but for
`apt-get download` of packages not yet in the cache.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import corpus, debian, shards

DEFAULT_CACHE = "~/.cache/fot_mem/debian"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fot_mem.train.data", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="fetch a set's packages, cut documents, tokenize into shards")
    sets = "; ".join(f"{s.name}: {s.description}" for s in corpus.SETS.values())
    b.add_argument("--set", required=True, choices=sorted(corpus.SETS), dest="set_name", help=sets)
    b.add_argument("--out", required=True, type=Path, help="output directory")
    b.add_argument("--tokenizer", default="bytes", choices=["bytes", "smollm2"])
    b.add_argument(
        "--cache", default=DEFAULT_CACHE, help=f"package cache (default {DEFAULT_CACHE})"
    )
    b.add_argument(
        "--max-docs", type=int, default=None, help="stop after N documents (in build order)"
    )
    b.add_argument(
        "--sample",
        type=float,
        default=None,
        help="keep a stable fraction of directories, spread over every package (e.g. 0.05)",
    )
    b.add_argument(
        "--val-fraction", type=float, default=0.05, help="share of directories held out (0.05)"
    )
    b.add_argument(
        "--min-bytes",
        type=int,
        default=corpus.MIN_DOC_BYTES,
        help=f"a directory becomes a document from this size ({corpus.MIN_DOC_BYTES})",
    )
    b.add_argument(
        "--max-bytes",
        type=int,
        default=corpus.MAX_DOC_BYTES,
        help=f"larger directories are cut at file boundaries ({corpus.MAX_DOC_BYTES})",
    )
    b.add_argument("--overwrite", action="store_true", help="replace an existing build")
    i = sub.add_parser("info", help="describe a build (and check its shards)")
    i.add_argument("out", type=Path)
    return p


def _sizes(lengths: np.ndarray) -> str:
    if len(lengths) == 0:
        return "0 documents"
    return (
        f"{len(lengths):,} documents, {int(lengths.sum()):,} tokens "
        f"(median {int(np.median(lengths)):,}, min {int(lengths.min()):,}, "
        f"max {int(lengths.max()):,})"
    )


def build(args: argparse.Namespace) -> int:
    started = time.time()
    cset = corpus.SETS[args.set_name]
    names = []
    for name in cset.packages:
        if debian.available(name):
            names.append(name)
        else:
            warnings.warn(f"set {cset.name}: apt knows no package {name}; skipped", stacklevel=1)
    if not names:
        print(f"error: none of the packages of set {cset.name} is available", file=sys.stderr)
        return 1
    tokenizer = shards.get_tokenizer(args.tokenizer)
    packages = debian.fetch(names, args.cache)
    fetched = time.time()
    print(
        f"fetched {len(packages)} packages in {fetched - started:.1f} s: "
        + ", ".join(f"{p.name} {p.version}" for p in packages)
    )
    docs = cset.documents(packages, min_bytes=args.min_bytes, max_bytes=args.max_bytes)
    if args.sample is not None:
        docs = (doc for doc in docs if corpus.sampled(doc[0], args.sample))
    if args.max_docs is not None:
        docs = itertools.islice(docs, args.max_docs)
    text_bytes = 0

    def counted() -> Iterator[tuple[str, str]]:
        nonlocal text_bytes
        for doc_id, text in docs:
            text_bytes += len(text.encode("utf-8"))
            yield doc_id, text

    metadata = {
        "set": cset.name,
        "description": cset.description,
        "packages": {p.name: p.version for p in packages},
        "debs": {p.name: p.deb.name for p in packages},
        "val_fraction": args.val_fraction,
        "min_bytes": args.min_bytes,
        "max_bytes": args.max_bytes,
        "max_file_bytes": corpus.MAX_FILE_BYTES,
        "max_docs": args.max_docs,
        "sample": args.sample,
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    index = shards.write_shards(
        counted(),
        args.out,
        tokenizer,
        lambda doc_id: corpus.split_of(doc_id, args.val_fraction),
        metadata=metadata,
        overwrite=args.overwrite,
    )
    seconds = time.time() - started
    print(
        f"built {args.out} in {seconds:.1f} s ({time.time() - fetched:.1f} s after fetching); "
        f"{text_bytes / 1e6:,.1f} MB of text"
    )
    for name, split in index["splits"].items():
        lengths = np.array([d["length"] for d in split["documents"]], dtype=np.int64)
        print(f"  {name}: {_sizes(lengths)} in {len(split['shards'])} shards")
    return 0


def info(args: argparse.Namespace) -> int:
    index = shards.read_index(args.out)
    meta = index.get("metadata", {})
    tok = index["tokenizer"]
    print(
        f"{args.out}: set {meta.get('set', '?')}, tokenizer {tok['name']} (vocab "
        f"{tok['vocab_size']:,}), {index['dtype']}, built {meta.get('built', '?')}"
    )
    for name, version in meta.get("packages", {}).items():
        print(f"  package {name} {version}")
    for name in index["splits"]:
        ds = shards.TokenDataset(args.out, name)  # validates the shards too
        size = sum((args.out / s["file"]).stat().st_size for s in index["splits"][name]["shards"])
        print(f"  {name}: {_sizes(ds.lengths)}; {size / 1e6:,.1f} MB")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return build(args) if args.command == "build" else info(args)


if __name__ == "__main__":
    sys.exit(main())
