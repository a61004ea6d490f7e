"""`fot-mem dictionary`: the paper's dictionary lookup experiment, end to end.

fot-mem dictionary run --out DIR        train FoT, the d = 1 control and the no-memory baseline,
                                        fill each memory size into a store, answer from a new
                                        process, measure r_d; DIR/results.json and plots
fot-mem dictionary fill MODEL STORE     dictionaries of --sizes tokens into a store
fot-mem dictionary answer MODEL STORE   answer query windows from a reopened store (JSON out)
fot-mem dictionary plot RESULTS         the plots of a results.json

`--preset paper` is the paper's shape (37.7M parameters, local context 256, one memory layer
without positional encoding, QK-norm, k = 32); `--preset tiny` is a CPU-sized version of the
whole pipeline that runs in seconds (the tests run it)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .dictionary_run import PRESETS, device_of, load, sizes_of
from .dictionary_run import run as run_experiment


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("dictionary", help="the paper's dictionary lookup experiment")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    run = verbs.add_parser("run", help="train, fill, answer, measure, plot")
    run.add_argument("--out", required=True, help="folder for runs, stores and results.json")
    run.add_argument("--preset", default="paper", choices=tuple(PRESETS))
    run.add_argument("--steps", type=int, help="training steps of the memory models (preset's)")
    run.add_argument("--baseline-steps", type=int, help="training steps of the baseline")
    run.add_argument(
        "--minutes",
        default="0,0,0,0",
        help="training time caps of d1_phase,fot,control_d1,baseline (0: none)",
    )
    run.add_argument("--sizes", help="memory sizes N, comma-separated (preset's)")
    run.add_argument(
        "--control-sizes", help="the d = 1 control's sizes N, when fewer than --sizes (time)"
    )
    run.add_argument("--store", help="where stores go (default OUT/stores); emptied per model")
    run.add_argument("--device", default=None, help="cuda if available, else cpu")
    run.add_argument(
        "--only",
        default="fot,control_d1,baseline",
        help="models to run; d1_phase alone: train the d = 1 phase and stop (a sweep)",
    )
    run.add_argument(
        "--reuse-d1",
        action="store_true",
        help="continue from OUT/d1_phase's checkpoint instead of training the phase again",
    )
    run.add_argument("--memory-layer", type=int, help="the memory layer's index (preset's)")
    run.add_argument("--lr", type=float, help="peak learning rate (preset's)")
    run.add_argument(
        "--near",
        type=int,
        help="FoT's and the control's training keys in families of this many near misses "
        "(hard negatives; preset's, 0: the paper's uniform keys)",
    )
    run.add_argument(
        "--also-k",
        default="",
        help="answer FoT's two largest memories again with these k (comma-separated)",
    )
    run.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    run.add_argument(
        "--schedule",
        default="jump",
        choices=("jump", "ramp"),
        help="FoT after the d = 1 phase: d = max at once (the paper) or 2, 4, 8, ... first",
    )
    run.set_defaults(run=run_experiment)

    for name, fn in (("fill", _fill), ("answer", _answer)):
        v = verbs.add_parser(name, help=f"{name} dictionaries of --sizes tokens")
        v.add_argument("model", help="a training run folder or checkpoint")
        v.add_argument("store", help="the store's folder")
        v.add_argument("--sizes", required=True)
        v.add_argument("--seed", type=int, default=0)
        v.add_argument("--device", default=None)
        v.add_argument("--fill-batch", type=int, default=512, help="windows per forward (fill)")
        v.add_argument("--query-sets", type=int, default=4, help="query windows per size")
        v.add_argument("--k", type=int, default=32, help="memories per query and head")
        v.add_argument("--json", help="write the figures here")
        v.set_defaults(run=fn)

    plot = verbs.add_parser("plot", help="plots of a results.json")
    plot.add_argument("results")
    plot.set_defaults(
        run=lambda a: print(
            *_plots(json.loads(Path(a.results).read_text()), Path(a.results).parent), sep="\n"
        )
    )


def _fill(args: argparse.Namespace) -> None:
    from ..eval.dictionary import fill

    model, task = load(args.model, device_of(args.device))
    found = fill(
        model,
        args.store,
        task,
        sizes_of(args.sizes),
        seed=args.seed,
        batch_windows=args.fill_batch,
        progress=lambda line: print(line, flush=True),
    )
    _emit(args.json, found)


def _answer(args: argparse.Namespace) -> None:
    from ..eval.dictionary import answer

    device = device_of(args.device)
    model, task = load(args.model, device)
    found = answer(
        model,
        args.store,
        task,
        sizes_of(args.sizes),
        seed=args.seed,
        query_sets=args.query_sets,
        k=args.k,
        mirror=device if device.startswith("cuda") else None,
        progress=lambda line: print(line, flush=True),
    )
    _emit(args.json, found)


def _emit(path: str | None, found: dict[str, Any]) -> None:
    if path:
        from ..eval.common import write_json

        write_json(path, found)


def _plots(results: dict[str, Any], folder: Path) -> list[Path]:
    from ..eval.dictionary import plots  # matplotlib and torch, only when plotting

    return plots(results, folder)
