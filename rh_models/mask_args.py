"""The mask model args ``rh-hf`` and ``rh-vllm`` share, checked before any model loads.

Why before: a typo in ``mask_heads`` or a missing score file should cost the user one line, not a model load
(minutes for a 70B model). What ``top:K`` / ``random:K`` select depends on the loaded model's shape, so only the
syntax and the files are checked here; :func:`rh_models.heads.select_heads` resolves the heads afterwards. What
a ranking needs from the score file alone -- heads that scored above 0, as many as ``top:K`` asks for unless
``tie_break=random`` -- is checked here too, on the file's shape (which must be the model's).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rh_models.arguments import optional_int
from rh_models.attention import check_mask_method
from rh_models.errors import RHError
from rh_models.heads import HeadScores, HeadSpec, check_random_match, check_ranking, check_tie_break, parse_head_spec


@dataclass(frozen=True)
class MaskArgs:
    spec: HeadSpec
    head_scores: str | None
    method: str
    scope: str
    seed: int
    random_exclude: int | None
    random_match: str | None
    head_means: str | None = None
    tie_break: str = "none"

    def selection(self) -> dict[str, Any]:
        """Keyword arguments of ``set_mask`` for this request."""
        return {"method": self.method, "scope": self.scope, "seed": self.seed, "random_exclude": self.random_exclude,
                "random_match": self.random_match, "tie_break": self.tie_break}


def parse_mask_args(mask_heads: Any = "none", head_scores: Any = None, mask_method: Any = "zero",
                    mask_scope: Any = "all", mask_seed: Any = 0, random_exclude: Any = None,
                    random_match: Any = None, head_means: Any = None, tie_break: Any = None) -> MaskArgs:
    """The strings lm-eval passes from ``--model_args``, as a checked :class:`MaskArgs`."""
    method, scope = str(mask_method), str(mask_scope)
    check_mask_method(method, scope)
    spec = parse_head_spec(str(mask_heads))
    if spec.needs_scores and head_scores is None:
        raise RHError(f"mask_heads={mask_heads} needs head_scores=PATH (a score file from `rh detect`)")
    if head_scores is not None and not Path(head_scores).is_file():
        raise RHError(f"head-score file {head_scores} does not exist")
    if method == "mean" and head_means is None:
        raise RHError("mask_method=mean needs head_means=PATH (the heads' mean outputs, from `rh means`)")
    if head_means is not None and method != "mean":
        raise RHError(f"head_means is read only by mask_method=mean (mask_method={method}); drop it or pass "
                      "mask_method=mean")
    if head_means is not None and not Path(head_means).is_file():
        raise RHError(f"head-means file {head_means} does not exist")
    args = MaskArgs(spec=spec, head_scores=None if head_scores is None else str(head_scores), method=method,
                    scope=scope, seed=optional_int("mask_seed", mask_seed) or 0,
                    random_exclude=optional_int("random_exclude", random_exclude),
                    random_match=check_random_match(random_match),
                    head_means=None if head_means is None else str(head_means), tie_break=check_tie_break(tie_break))
    if args.head_scores is not None and spec.kind in ("top", "random"):
        check_ranking(spec, HeadScores.load(args.head_scores), args.tie_break, args.random_exclude, args.random_match)
    return args


MASK_ARGS = tuple(inspect.signature(parse_mask_args).parameters)  # the model args both backends take for masks
