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
from typing import Any

from rh_models.arguments import optional_int
from rh_models.attention import check_mask_method
from rh_models.files import require_file
from rh_models.head_means import check_means_request
from rh_models.heads import (
    HeadScores,
    HeadSpec,
    check_random_match,
    check_ranking,
    check_tie_break,
    parse_head_spec,
    require_scores,
)


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
    if spec.needs_scores:
        require_scores(head_scores, f"mask_heads={mask_heads}")
    if head_scores is not None:
        require_file(head_scores, "head-score file")
    check_means_request(method, head_means)
    args = MaskArgs(spec=spec, head_scores=None if head_scores is None else str(head_scores), method=method,
                    scope=scope, seed=optional_int("mask_seed", mask_seed) or 0,
                    random_exclude=optional_int("random_exclude", random_exclude),
                    random_match=check_random_match(random_match),
                    head_means=None if head_means is None else str(head_means), tie_break=check_tie_break(tie_break))
    if args.head_scores is not None and spec.kind in ("top", "random"):
        check_ranking(spec, HeadScores.load(args.head_scores), args.tie_break, args.random_exclude, args.random_match)
    return args


MASK_ARGS = tuple(inspect.signature(parse_mask_args).parameters)  # the model args both backends take for masks
