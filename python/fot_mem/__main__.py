"""`python -m fot_mem` runs the `fot-mem` command line."""

from .cli import main

main()
