"""`fot-mem search`: the memories a query text retrieves at one layer and head, shown with the
document's tokens around each hit, so a person can see what the memory returns."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from ..exceptions import InvalidValueError
from .score import Session, _common


def add_parser(sub: Any) -> None:
    p = sub.add_parser("search", help="top-k memory hits of a query text, with their context")
    _common(p)
    p.add_argument("--query", required=True, help="the query text (its last token asks)")
    p.add_argument("--layer", type=int, default=None, help="a memory layer (default: the last)")
    p.add_argument("--head", type=int, default=0, help="the query head")
    p.add_argument("--top", type=int, default=5, help="hits to show")
    p.add_argument("--context", type=int, default=12, help="tokens shown on each side of a hit")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    s = Session(args)
    try:
        layers = s.store.layers
        layer = layers[-1] if args.layer is None else args.layer
        if layer not in layers:
            raise InvalidValueError(f"layer {layer} is not a memory layer ({layers})")
        heads = s.model.config.num_heads
        if not 0 <= args.head < heads:
            raise InvalidValueError(f"head {args.head} is not in 0..{heads - 1}")
        if args.context < 0:
            raise InvalidValueError(f"--context must be >= 0, got {args.context}")
        if s.committed == 0:
            raise InvalidValueError(f"document {s.name!r} has no tokens in memory yet")
        if args.top < 1:
            raise InvalidValueError(f"--top must be >= 1, got {args.top}")
        ids = torch.tensor(s.tok.encode(args.query), dtype=torch.int64)
        if not 1 <= len(ids) <= s.window:
            raise InvalidValueError(f"the query must have 1..{s.window} tokens, got {len(ids)}")
        reader = s.reader()
        asked: dict[str, torch.Tensor] = {}

        def provider(at: int, queries: torch.Tensor) -> Any:
            if at == layer:  # the layer's queries as it scores memories: [1, H, T, D]
                asked["q"] = queries[0, :, -1].detach().float()
            return reader.provider(at, queries)

        with torch.no_grad():
            s.model(ids[None], memory=provider)
        scores, hits = s.document.search(
            layer, asked["q"][None].cpu().numpy(), args.top, backend=s.backend
        )
        print(f"query {args.query!r}: layer {layer}, head {args.head}, top {args.top}")
        for rank, (score, pos) in enumerate(zip(scores[0, args.head], hits[0, args.head]), 1):
            if pos < 0:
                break
            where = _around(s, int(pos), args.context)
            print(f"{rank:3d}. score {score:8.3f}  token {int(pos):>9,}  {where}")
    finally:
        s.close()


def _around(s: Session, pos: int, context: int) -> str:
    """The hit token in [brackets] between its neighbours, on one line."""
    ids = s.ids
    before = s.tok.decode(ids[max(0, pos - context) : pos].tolist())
    hit = s.tok.decode(ids[pos : pos + 1].tolist())
    after = s.tok.decode(ids[pos + 1 : pos + 1 + context].tolist())
    return (before + "[" + hit + "]" + after).replace("\n", "⏎").replace("\t", " ")
