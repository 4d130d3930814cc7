"""Benchmark entry point (vLLM venv): ``.venv-vllm/bin/python benchmarks/vllm_throughput.py [--limit 64] ...``.

``rh-vllm`` vs ``rh-hf`` throughput on one task with the same heads masked; see
:mod:`rh_eval.bench.vllm_throughput` for what is measured. The ``__main__`` guard is required: vLLM starts its
engine processes with ``spawn``, which imports this script again.
"""

import sys

from rh_eval.bench.vllm_throughput import main

if __name__ == "__main__":
    sys.exit(main())
