"""What ``tests/test_vllm.py`` needs of a vLLM engine and no ``rh-vllm`` run does: stopping it, and digests of its weights.

Usage (in the vLLM venv; importing this module imports no vLLM)::

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rh_models.vllm_lm, "EXTENSION_QUALNAME", DIGESTING_EXTENSION)
        lm = RHVLLM(...)                                    # its workers also answer "rh_weight_digest"
    lm.model.collective_rpc("rh_weight_digest")            # one {"<layer>.qkv": sha256, ...} per worker
    shutdown_engine(lm.model)

Why a worker extension of its own: vLLM runs code on its workers by method name (a pickled function would need
``VLLM_ALLOW_INSECURE_SERIALIZATION``), and the digest is the tests' business, not the production extension's.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from rh_models.vllm_worker import RHWorkerExtension, _weights

DIGESTING_EXTENSION = "vllm_helpers.DigestingExtension"  # importable in vLLM's workers: tests/ is on sys.path


def shutdown_engine(llm: Any) -> None:
    """Stop an ``LLM``'s engine processes now (rather than at interpreter exit, when pytest's streams are closed)."""
    llm.llm_engine.engine_core.shutdown()


class DigestingExtension(RHWorkerExtension):
    """``rh-vllm``'s worker extension plus one method for the tests."""

    def rh_weight_digest(self) -> dict[str, str]:
        """SHA-256 of every matrix a mask may edit on this rank (``<layer>.qkv``, ``.qkv_bias``, ``.o``,
        ``.o_bias``): the tests compare them before a mask and after restoring."""
        digests: dict[str, str] = {}
        for layer, (_, qkv, out, _) in sorted(self._rh_blocks().items()):
            weights = _weights(qkv, out)
            o_bias = out.bias.data if getattr(out, "bias", None) is not None else None
            for name, tensor in (("qkv", weights.qkv_weight), ("qkv_bias", weights.qkv_bias), ("o", weights.o_weight),
                                 ("o_bias", o_bias)):
                if tensor is not None:
                    data = tensor.detach().contiguous().cpu().view(torch.uint8).numpy()
                    digests[f"{layer}.{name}"] = hashlib.sha256(data.tobytes()).hexdigest()
        return digests
