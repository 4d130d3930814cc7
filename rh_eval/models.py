"""Loading the ``rh-hf`` model a workflow runs on: one function, one set of defaults.

Usage::

    lm = load_hf("smollm2-135m")                               # batch size 1, no mask, rh-hf's device and dtype
    lm = load_hf("smollm2-135m", batch_size=48)                # rh demo: a CoT task's documents in one batch
    lm = load_hf("path/to/model", head_scores="scores.json", dtype="float32", device="cpu")   # model args

Defaults, and why: ``batch_size=1``, lm-eval's own, and what detection and ``rh means`` need (one sequence at a
time: resumable tests, unpadded means); ``head_scores=None`` and no mask, so a loaded model is the unmasked model
until a workflow swaps a mask in (``set_mask``); device and dtype as ``rh-hf`` chooses them (the first GPU, else
the CPU; the model's dtype) unless model args say otherwise. ``model_args`` are ``rh-hf``'s keyword arguments, as
``--model-args`` gives them (:func:`rh_eval.cli_args.parse_model_args`).

Why one function: ``rh detect``, ``rh means``, ``rh compare``, ``rh demo`` and the benchmarks each built
``RHHFLM`` with their own defaults; a default changed in one of them would make two workflows measure two
different models. (``rh compare --backend vllm`` builds its ``rh-vllm`` engine in :func:`rh_eval.compare.load_model`.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEFAULT_BATCH_SIZE = 1


def load_hf(model: str, batch_size: int | str = DEFAULT_BATCH_SIZE, head_scores: str | Path | None = None,
            **model_args: Any):
    """An :class:`~rh_models.lm.RHHFLM` of ``model`` (alias, local folder or hub id), unmasked unless ``model_args``
    set a mask; ``head_scores`` is the file ``top:K`` / ``random:K`` masks rank heads by."""
    from rh_models.lm import RHHFLM

    return RHHFLM(pretrained=model, batch_size=batch_size,
                  head_scores=None if head_scores is None else str(head_scores), **model_args)
