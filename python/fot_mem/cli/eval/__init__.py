"""`fot-mem eval EVALUATION`: the evaluations of `fot_mem.eval` from the command line.

fot-mem eval distraction   the positive attention mass r_d against d (paper section 3.3)
fot-mem eval perplexity    perplexity against memory size on held-out long documents
fot-mem eval passkey       passkey retrieval accuracy by prompt length and depth
fot-mem eval suite STEPS   evaluation steps in one process, each model loaded once
"""

from __future__ import annotations

import argparse
from typing import Any

from . import distraction, passkey, perplexity, suite


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluations: distraction, perplexity, passkey, suite",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evals = p.add_subparsers(dest="evaluation", required=True, metavar="EVALUATION")
    for module in (distraction, perplexity, passkey, suite):
        q = evals.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(q)
        q.set_defaults(run=lambda args, m=module, q=q: _exit(m.command(args, q)))


def _exit(result: object) -> None:
    """A command's int result is its exit status (the suite's: 1 when a step failed)."""
    if isinstance(result, int) and result:
        raise SystemExit(result)
