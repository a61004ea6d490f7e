"""The paper's evaluations at our scale (issue 7): distraction (positive attention mass r_d),
perplexity against memory size, and passkey retrieval. Each writes JSON and a PNG plot; their
command line is `fot-mem eval`."""
