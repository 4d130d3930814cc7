"""rh-eval's benchmarks, one module each; ``benchmarks/*.py`` are thin scripts that call them.

* :mod:`rh_eval.bench.overhead`: ``rh bench`` (= ``python benchmarks/overhead.py``), what masking and recording
  cost as ratios to stock lm-eval, then its second table from :mod:`rh_eval.bench.reuse`;
* :mod:`rh_eval.bench.reuse`: ``rh detect`` with and without haystack-prefix KV reuse;
* :mod:`rh_eval.bench.vllm_throughput`: ``rh-vllm`` vs ``rh-hf`` on one task with the same heads masked
  (``benchmarks/vllm_throughput.py``, in the vLLM venv).

Measured results are kept as JSON in ``benchmarks/results/``. Importing this package is free (no torch, no
lm-eval): each benchmark imports what it measures when it runs.
"""
