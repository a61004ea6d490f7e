"""Crossbatch training, a library: the run's configuration, batching, the loop, and the data sets
built from Debian packages (their command line: `fot-mem train`, `fot-mem data`)."""
