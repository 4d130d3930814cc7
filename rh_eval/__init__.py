"""rh-eval workflows: the ``rh`` command (detect, compare, check, demo, bench, plots) over lm-eval.

Usage::

    rh demo                                           # detect -> compare -> table, checks and plots
    rh detect --model smollm2-135m --output scores.json
    rh compare --model smollm2-135m --head-scores scores.json --tasks rh_niah --k 6 --output-dir out

    from rh_eval.compare import CompareConfig, compare
    config = CompareConfig(model="smollm2-135m", tasks=("rh_niah",), output_dir=Path("out"), ks=(6,))
    board, plots = compare(config, head_scores=Path("scores.json"))

The one package that may import both others: :mod:`rh_models` (the model side: masks, recording, scores) and
:mod:`rh_tasks` (what the task YAMLs use). Each workflow is a typed function over a config dataclass; the CLI
modules only turn arguments into those configs. Importing this package is free (no torch, no lm-eval).
"""
