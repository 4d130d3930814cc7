"""The mask API that ``rh-hf`` and ``rh-vllm`` share: one ``set_mask`` / ``mask_info`` / ``use_head_scores``.

Usage (either backend; what ``rh compare`` does between conditions)::

    lm.use_head_scores("scores.json")
    heads = lm.set_mask("random:8", method="uniform", seed=1)   # a HeadSet, verified before it returns
    lm.mask_info()        # lands in lm-eval's results JSON as config.rh_mask

Why one class: head selection, the record of what was asked for and the shape of ``mask_info`` must not differ
between backends, or a comparison across them compares two conventions. A backend mixes :class:`MaskedLM` in
before lm-eval's model class, calls :meth:`MaskedLM.init_mask` once its model is loaded, and implements
``_apply_mask(heads, method, scope)``: make ``heads`` the mask, replacing the previous one, and prove that it
took effect (``rh-hf``: a probe forward per masked head; ``rh-vllm``: a weight edit checked on every worker).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rh_models.attention import check_mask_method
from rh_models.errors import RHError
from rh_models.head_means import HeadMeans, require_means
from rh_models.heads import HeadScores, HeadSet, HeadSpec, check_tie_break, select_heads, spec_text, unscored_heads
from rh_models.mask_args import MaskArgs
from rh_models.shape import config_sha256, head_dim, head_shape


class MaskedLM:
    """What both lm-eval model classes of rh-eval answer about masking."""

    n_layers: int
    n_heads: int
    head_scores: HeadScores | None
    head_means: HeadMeans | None = None  # mask_method=mean: each head's mean output (see rh_models.head_means)
    model_alias: str | None = None
    mask_attention = ""  # how the mask is applied, for mask_info (rh-hf: its base attention; rh-vllm: weight edits)

    def init_mask(self, config: Any, mask: MaskArgs) -> HeadSet:
        """Read the head shape from the model's config, load the score file, set the requested mask."""
        self.n_layers, self.n_heads = head_shape(config)
        self.head_dim = head_dim(config)
        self.config_sha256 = config_sha256(config)
        self.head_scores = HeadScores.load(mask.head_scores, self.n_layers, self.n_heads) if mask.head_scores else None
        if mask.head_means:
            self.use_head_means(mask.head_means)
        self._mask = (HeadSet((), self.n_layers, self.n_heads), "zero", "all")
        self._mask_request: dict[str, Any] = {}
        return self.set_mask(mask.spec, **mask.selection())

    def _apply_mask(self, heads: HeadSet, method: str, scope: str) -> None:
        raise NotImplementedError

    def set_mask(
        self,
        mask_heads: str | HeadSpec | HeadSet = "none",
        method: str = "zero",
        scope: str = "all",
        seed: int = 0,
        random_exclude: int | None = None,
        random_match: str | None = None,
        tie_break: str = "none",
    ) -> HeadSet:
        """Mask these heads from now on (replacing any previous mask) and prove that it took effect.

        ``tie_break="random"`` lets ``top:K`` draw, with ``seed``, the places past the heads that scored above 0
        (refused otherwise); the record says so, and how many such heads were chosen (``unscored_heads``).
        """
        check_mask_method(method, scope)
        tie_break = check_tie_break(tie_break)
        require_means(method, self.head_means, give="head_means=PATH (or a call of use_head_means first)")
        heads = mask_heads if isinstance(mask_heads, HeadSet) else select_heads(
            mask_heads, self.n_layers, self.n_heads, scores=self.head_scores, seed=seed,
            random_exclude=random_exclude, random_match=random_match, tie_break=tie_break)
        try:
            self._apply_mask(heads, method, scope)
        except BaseException:  # e.g. a failed self-check: never leave the model masked while the record says otherwise
            self._unmask()
            raise
        self._mask = (heads, method, scope)
        self._mask_request = {
            "spec": spec_text(mask_heads),
            "seed": seed,
            "random_exclude": random_exclude,
            "random_match": random_match,
            "tie_break": tie_break,
            "unscored_heads": unscored_heads(mask_heads, heads, self.head_scores),
        }
        return heads

    @property
    def masked_heads(self) -> HeadSet:
        return self._mask[0]

    def use_head_scores(self, path: str | Path) -> "MaskedLM":
        """Rank heads by this score file from now on (``top:K`` / ``random:K``); it must fit the model's shape."""
        self.head_scores = HeadScores.load(path, self.n_layers, self.n_heads)
        return self

    def use_head_means(self, path: str | Path) -> "MaskedLM":
        """Mean outputs for ``mask_method=mean`` from now on; the file must hold every head of this model's shape
        and come from a model with this config. A mean mask already set is re-applied with the new means."""
        means = HeadMeans.load(path, self.n_layers, self.n_heads, self.head_dim)
        made_by = means.provenance.get("model_config_sha256")
        if made_by is None:  # the shape alone would let one model's means pass for any other model of its size
            raise RHError(f"head-means file {path} does not say which model config it was made on (no "
                          "model_config_sha256 in its provenance); rewrite it for this model with `rh means`")
        if made_by != self.config_sha256:
            raise RHError(f"head-means file {path} was made on a model with another config (model "
                          f"{means.provenance.get('model')!r}); write one for this model with `rh means`")
        previous, self.head_means = self.head_means, means
        mask = getattr(self, "_mask", None)
        if mask is not None and mask[1] == "mean" and len(mask[0]):
            try:
                self._apply_mask(*mask)
            except BaseException:
                self.head_means = previous
                self._unmask()
                raise
        return self

    def _unmask(self) -> None:
        """After a mask failed to apply (the model may be half-masked): record "no mask" and make it true.

        Why not restore the previous mask: applying it could fail in the same way, and a model that is unmasked
        and says so is a state every caller can reason about; the caller re-raises the original error.
        """
        self._mask = (HeadSet((), self.n_layers, self.n_heads), "zero", "all")
        self._mask_request = {"spec": "none"}
        self._apply_mask(*self._mask)

    def mask_info(self) -> dict[str, Any]:
        """Everything needed to reproduce the current condition; lands in lm-eval's results JSON."""
        heads, method, scope = self._mask
        means = ({"head_means": self.head_means.source, "head_means_sha256": self.head_means.sha256}
                 if method == "mean" and self.head_means else {})
        return {
            **self._mask_request,
            "heads": [list(h) for h in heads],
            "method": method,
            "scope": scope,
            "head_scores": self.head_scores.source if self.head_scores else None,
            "attention": self.mask_attention,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            **means,
        }

    def mask_model_info(self) -> dict[str, Any]:
        """The keys both backends add to lm-eval's ``get_model_info``."""
        info: dict[str, Any] = {"rh_mask": self.mask_info()}
        if self.model_alias:
            info["rh_model_alias"] = self.model_alias
        return info
