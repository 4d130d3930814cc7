"""How a needle test's answer is judged: the one scoring function shared by the NIAH tasks and the recorder.

Usage::

    from rh_models.answers import score_answer
    score_answer("a spoonful of smoked paprika", ["a spoonful of smoked paprika stirred in"], "rouge1_recall")
    score_answer("The code is 4417.", ["4417"], "string_match")     # 1.0

Why it lives on the model side: ``rh-hf``'s recorder must decide whether a test was *answered* exactly as the
task's own metric decides it (the paper counts a test only when its answer is right), and the model package may
not import the task package. The NIAH task's ``process_results`` calls this same function, so the two can never
disagree. Metrics: Wu et al. (2024) score retrieval with ROUGE-1 *recall* of the needle's answer (a verbatim copy
scores 1, extra words cost nothing); RULER scores key -> value needles by the share of expected values that occur
in the output, case-insensitively.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

ROUGE = "rouge1_recall"
MATCH = "string_match"
METRICS = (ROUGE, MATCH)
ANSWERED_ABOVE = 0.5  # a test is "answered" when its score exceeds this (the paper: ROUGE-1 recall > 0.5)

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f]")


@functools.lru_cache(maxsize=1)
def _rouge1() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)


def clean_prediction(text: str) -> str:
    """Strip the generation and drop control characters (keeping newlines)."""
    return _CONTROL.sub(" ", text).strip()


def rouge1_recall(prediction: str, reference: str) -> float:
    """Share of the reference's unigrams found in the prediction (rouge-score tokenization: lowercase words)."""
    return float(_rouge1().score(reference, prediction)["rouge1"].recall)


def string_match(prediction: str, references: Sequence[str]) -> float:
    """Fraction of ``references`` occurring in ``prediction``, case-insensitively (RULER's ``string_match_all``)."""
    if not references:
        return 0.0
    lowered = prediction.lower()
    return sum(ref.lower() in lowered for ref in references) / len(references)


def score_answer(prediction: str, answers: Sequence[str], metric: str) -> float:
    """Score one generation against a doc's expected answers with the doc's metric (mean over answers)."""
    prediction = clean_prediction(prediction)
    if metric == ROUGE:
        return sum(rouge1_recall(prediction, answer) for answer in answers) / max(len(answers), 1)
    if metric == MATCH:
        return string_match(prediction, answers)
    raise ValueError(f"unknown answer metric {metric!r}; expected one of {', '.join(METRICS)}")
