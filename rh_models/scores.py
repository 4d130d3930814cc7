"""From recorded top-1 positions to copy events and per-head retrieval scores (Wu et al. 2024, eq. 1).

Usage::

    events = copy_events(top1, sequence, prompt_length, needle_positions, steps)
    per_head = retrieval_scores(events, n_needle_tokens=len(needle_positions), n_layers=30, n_heads=9)
    accumulator.add(per_head) ; accumulator.write("scores.json")

A head *copies* at a decoding step when its most-attended position lies inside the needle and holds the
token being generated. Its score on one test is ``|distinct needle positions copied| / |needle tokens|``.
The paper's released code counts every copying step instead (so repeats count and a score can exceed 1);
``count_repeats=True`` reproduces that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from rh_models.atomic import write_json_atomic
from rh_models.heads import format_head


@dataclass(frozen=True)
class CopyEvent:
    step: int
    layer: int
    head: int
    position: int
    token: int


def copy_events(
    top1: torch.Tensor,
    sequence: torch.Tensor,
    prompt_length: int,
    needle_positions: Iterable[int],
    steps: int,
) -> list[CopyEvent]:
    """Copy events of one sequence.

    ``top1``: ``(steps, layers, heads)`` absolute positions attended by the row that produced token
    ``prompt_length + step``; ``sequence``: the padded prompt followed by the generated tokens;
    ``steps``: how many generated tokens count (the answer up to its stop sequence).
    """
    needle = torch.zeros(sequence.shape[0], dtype=torch.bool)
    needle[list(needle_positions)] = True
    top1 = top1[:steps]
    generated = sequence[prompt_length : prompt_length + top1.shape[0]]
    in_needle = needle[top1]
    same_token = sequence[top1] == generated[:, None, None]
    hits = (in_needle & same_token).nonzero().tolist()
    return [
        CopyEvent(step, layer, head, int(top1[step, layer, head]), int(generated[step]))
        for step, layer, head in hits
    ]


def retrieval_scores(
    events: Iterable[CopyEvent], n_needle_tokens: int, n_layers: int, n_heads: int, count_repeats: bool = False
) -> torch.Tensor:
    """``(layers, heads)`` retrieval score of one test."""
    copied: dict[tuple[int, int], set[int] | int] = {}
    for event in events:
        key = (event.layer, event.head)
        if count_repeats:
            copied[key] = copied.get(key, 0) + 1  # type: ignore[operator]
        else:
            copied.setdefault(key, set()).add(event.position)  # type: ignore[union-attr]
    scores = torch.zeros(n_layers, n_heads)
    for (layer, head), value in copied.items():
        scores[layer, head] = (value if count_repeats else len(value)) / n_needle_tokens  # type: ignore[arg-type]
    return scores


class ScoreAccumulator:
    """Per-head lists of per-test scores, written in the paper's format ``{"L-H": [s1, s2, ...]}``."""

    def __init__(self, n_layers: int, n_heads: int) -> None:
        self.n_layers, self.n_heads = n_layers, n_heads
        self.per_test: list[list[float]] = []  # one flattened (layers*heads) row per contributing test
        self.tests_seen = 0

    def add(self, scores: torch.Tensor | list[float] | None) -> None:
        """Add one test; ``None`` means it ran but did not contribute (answer judged wrong)."""
        self.tests_seen += 1
        if scores is not None:
            self.per_test.append(scores.flatten().tolist() if isinstance(scores, torch.Tensor) else list(scores))

    @property
    def tests_contributing(self) -> int:
        return len(self.per_test)

    def as_paper_format(self) -> dict[str, list[float]]:
        columns = list(zip(*self.per_test)) if self.per_test else [()] * (self.n_layers * self.n_heads)
        heads = [(layer, head) for layer in range(self.n_layers) for head in range(self.n_heads)]
        return {format_head(h): [round(v, 6) for v in col] for h, col in zip(heads, columns)}

    def write(self, path: str | Path) -> None:
        write_json_atomic(path, self.as_paper_format())
