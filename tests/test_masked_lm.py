"""The mask API both backends share (``MaskedLM``): what a failed mask leaves behind, which head-means files it takes.

Driven through ``rh-hf`` on the tiny random llama; ``rh-vllm`` runs the same ``set_mask`` / ``use_head_means``.
"""

from __future__ import annotations

import pytest
import torch

from rh_models.errors import RHError
from rh_models.head_means import HeadMeans
from rh_models.lm import RHHFLM, output_projections


@pytest.fixture(scope="module")
def lm(tiny_llama_dir) -> RHHFLM:
    return RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=1)


def _logits(lm: RHHFLM) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(torch.arange(3, 15).unsqueeze(0)).logits


def test_a_failed_self_check_leaves_the_model_unmasked_and_says_so(lm):
    """On 3ac779b the failed mask stayed in force while mask_info() still named the previous one."""
    lm.set_mask("none")
    unmasked = _logits(lm)
    lm.set_mask("0-1", method="zero")
    assert lm.mask_info()["heads"] == [[0, 1]] and not torch.equal(_logits(lm), unmasked)

    # something after our attention function makes layer 1's head outputs constant: masking 1-2 changes nothing
    projection = output_projections(lm.model, lm.control)[1]
    hook = projection.register_forward_pre_hook(lambda module, args: (torch.zeros_like(args[0]),) + args[1:])
    try:
        with pytest.raises(RHError, match="self-check failed"):
            lm.set_mask("1-2", method="uniform")
    finally:
        hook.remove()
    info = lm.mask_info()
    assert (info["heads"], info["spec"]) == ([], "none")
    assert lm.control.mask_by_layer == {} and not len(lm.control.heads)
    assert torch.equal(_logits(lm), unmasked)  # neither the failed mask nor the previous one is in force


def test_head_means_without_the_models_config_hash_are_refused(lm, tmp_path):
    """The shape alone matched any model of the same size (3ac779b accepted such a file)."""
    shape = (lm.n_layers, lm.n_heads, lm.head_dim)
    anonymous = HeadMeans(torch.zeros(shape), {"model": "someone's"}).save(tmp_path / "anonymous.json")
    with pytest.raises(RHError, match=r"anonymous\.json does not say which model config .*rewrite it for this model "
                                      r"with `rh means`"):
        lm.use_head_means(anonymous)
    assert lm.head_means is None
    made_here = HeadMeans(torch.zeros(shape), {"model_config_sha256": lm.config_sha256}).save(tmp_path / "means.json")
    assert lm.use_head_means(made_here).head_means.source == str(made_here)
