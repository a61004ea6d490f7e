"""Build a token-shard data set from Debian packages, or describe one (`fot-mem data`):

    fot-mem data build --set code --out data/code --tokenizer bytes
    fot-mem data info data/code

Invariant: a build is a pure function of the set's packages at the versions fetched (recorded in
the index's metadata with the options), the tokenizer and the options; it runs offline but for
`apt-get download` of packages not yet in the cache.
"""

from __future__ import annotations

import itertools
import sys
import time
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..data import shards
from . import corpus, debian, sets

DEFAULT_CACHE = "~/.cache/fot_mem/debian"


def _sizes(lengths: np.ndarray) -> str:
    if len(lengths) == 0:
        return "0 documents"
    return (
        f"{len(lengths):,} documents, {int(lengths.sum()):,} tokens "
        f"(median {int(np.median(lengths)):,}, min {int(lengths.min()):,}, "
        f"max {int(lengths.max()):,})"
    )


def build(
    set_name: str,
    out: Path,
    *,
    tokenizer: str = "bytes",
    cache: str = DEFAULT_CACHE,
    max_docs: int | None = None,
    sample: float | None = None,
    val_fraction: float = 0.05,
    min_bytes: int = corpus.MIN_DOC_BYTES,
    max_bytes: int = corpus.MAX_DOC_BYTES,
    overwrite: bool = False,
) -> int:
    """Builds set `set_name` (`sets.SETS`) into `out`; 1 when none of its packages exists."""
    started = time.time()
    cset = sets.SETS[set_name]
    names = []
    for name in cset.packages:
        if debian.available(name):
            names.append(name)
        else:
            warnings.warn(f"set {cset.name}: apt knows no package {name}; skipped", stacklevel=1)
    if not names:
        print(f"error: none of the packages of set {cset.name} is available", file=sys.stderr)
        return 1
    tok = shards.get_tokenizer(tokenizer)
    packages = debian.fetch(names, cache)
    fetched = time.time()
    print(
        f"fetched {len(packages)} packages in {fetched - started:.1f} s: "
        + ", ".join(f"{p.name} {p.version}" for p in packages)
    )
    docs = cset.documents(packages, min_bytes=min_bytes, max_bytes=max_bytes)
    if sample is not None:
        docs = (doc for doc in docs if corpus.sampled(doc[0], sample))
    if max_docs is not None:
        docs = itertools.islice(docs, max_docs)
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
        "val_fraction": val_fraction,
        "min_bytes": min_bytes,
        "max_bytes": max_bytes,
        "max_file_bytes": corpus.MAX_FILE_BYTES,
        "max_docs": max_docs,
        "sample": sample,
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    index = shards.write_shards(
        counted(),
        out,
        tok,
        lambda doc_id: corpus.split_of(doc_id, val_fraction),
        metadata=metadata,
        overwrite=overwrite,
    )
    seconds = time.time() - started
    print(
        f"built {out} in {seconds:.1f} s ({time.time() - fetched:.1f} s after fetching); "
        f"{text_bytes / 1e6:,.1f} MB of text"
    )
    for name, split in index["splits"].items():
        lengths = np.array([d["length"] for d in split["documents"]], dtype=np.int64)
        print(f"  {name}: {_sizes(lengths)} in {len(split['shards'])} shards")
    return 0


def info(out: Path) -> int:
    """Prints what the build in `out` holds (and checks its shards)."""
    index = shards.read_index(out)
    meta = index.get("metadata", {})
    tok = index["tokenizer"]
    print(
        f"{out}: set {meta.get('set', '?')}, tokenizer {tok['name']} (vocab "
        f"{tok['vocab_size']:,}), {index['dtype']}, built {meta.get('built', '?')}"
    )
    for name, version in meta.get("packages", {}).items():
        print(f"  package {name} {version}")
    for name in index["splits"]:
        ds = shards.TokenDataset(out, name)  # validates the shards too
        size = sum((out / s["file"]).stat().st_size for s in index["splits"][name]["shards"])
        print(f"  {name}: {_sizes(ds.lengths)}; {size / 1e6:,.1f} MB")
    return 0
