"""Every figure rh-eval draws, one module per kind: matplotlib's object API, written atomically.

    figures.py     a new figure and its atomic save (no pyplot state, safe in threads and tests)
    niah.py        the length x depth NIAH heatmap, from lm-eval samples or results (``rh plot niah``)
    heads.py       the layers x heads heatmap of a score file (``rh detect --plot``, the demo)
    conditions.py  what ``rh compare`` draws: dose-response, CoT vs direct, per-condition NIAH maps
"""
