"""Benchmark entry point: ``python benchmarks/overhead.py [--lengths 1000,2000,4000] [--repeats 5]``.

Same as ``rh bench``; see :mod:`rh_eval.bench.overhead` for what is measured and why it is reported as ratios.
"""

import sys

from rh_eval.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
