"""``rh heads summary``: the paper's "universal and sparse" table, for any number of models.

Usage::

    rh heads summary demo-out/head_scores.json g3/head_scores.json              # sparsity and where heads sit
    rh heads summary demo-out/head_scores.json --results demo-out ...           # + NIAH full / retrieval / random

Wu et al. (2024) find retrieval heads in every model family they try (*universal*) and few of them (*sparse*: under
5 % of heads score above 0.1), in the middle-to-late layers. One row per score file: the model (from the file's
``.meta.json``), its heads, the share above 0.1 and 0.5, where the top heads above 0.1 sit (the middle of their
layer as a share of the model's depth), and,
given the folder of an ``rh compare`` / ``rh demo`` run on that model, its NIAH score unmasked, with the top-K
retrieval heads masked and with K random heads masked (mean over seeds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rh_eval.leaderboard import Leaderboard, headline_column, value_text
from rh_models.errors import RHError
from rh_models.files import read_json
from rh_models.heads import DEFAULT_RETRIEVAL_THRESHOLD, HeadScores, format_head, read_score_provenance

TOP = 5  # heads shown per model, and whose depth is reported


@dataclass(frozen=True)
class ModelRow:
    """One model's line of the table."""

    model: str
    heads: str
    above_threshold: float
    above_half: float
    top: list[tuple[str, float]]
    top_depth: tuple[float, float]  # min and max of layer / n_layers over the top heads scoring > 0.1
    niah: dict[str, str]  # full / retrieval@K / random@K -> "0.95 [0.90, 0.98]" or "0.91 [0.85, 0.96] (3 seeds)"

    def cells(self) -> list[str]:
        niah = [self.niah.get(key, "—") for key in ("task", "full", "retrieval", "random")]
        low, high = self.top_depth
        return [self.model, self.heads, f"{self.above_threshold:.1%}", f"{self.above_half:.1%}",
                ", ".join(f"{head} ({score:.2f})" for head, score in self.top), f"{low:.2f}–{high:.2f}", *niah]


HEADERS = ["model", "heads (layers × heads)", f"score > {DEFAULT_RETRIEVAL_THRESHOLD}", "score > 0.5",
           f"top {TOP} heads (score)", "top heads at depth", "NIAH task", "full", "retrieval@K", "random@K"]


def model_row(scores_path: str | Path, results: str | Path | None = None) -> ModelRow:
    scores = HeadScores.load(scores_path)
    total = scores.n_layers * scores.n_heads
    ranked = scores.ranked()[:TOP]
    retrieval = [head for head, score in ranked if score > DEFAULT_RETRIEVAL_THRESHOLD] or [ranked[0][0]]
    depths = [(layer + 0.5) / scores.n_layers for layer, _ in retrieval]  # a layer's middle, as a share of depth
    return ModelRow(
        model=_model_name(Path(scores_path)),
        heads=f"{total} ({scores.n_layers} × {scores.n_heads})",
        above_threshold=scores.share_above(DEFAULT_RETRIEVAL_THRESHOLD),
        above_half=scores.share_above(0.5),
        top=[(format_head(head), score) for head, score in ranked],
        top_depth=(min(depths), max(depths)),
        niah=niah_contrast(Path(results)) if results else {},
    )


def niah_contrast(folder: Path) -> dict[str, str]:
    """NIAH full / retrieval@K / random@K of a comparison folder (its ``leaderboard.json``), smallest K."""
    path = folder / "leaderboard.json" if folder.is_dir() else folder
    board = Leaderboard.from_json(read_json(path, "leaderboard"), str(path))
    task = next((c.task for c in board.columns if c.task.startswith("rh_niah")), None)
    column = headline_column(board, task) if task else None
    if column is None:
        raise RHError(f"{path} has no rh_niah* column; run the comparison with an NIAH task")
    out = {"task": column.task}
    for kind in ("full", "retrieval", "random"):
        row = min((r for r in board.rows if r.kind == kind), key=lambda r: r.k, default=None)
        cell = board.cell(row.name, column) if row else None
        if cell is None:
            continue
        text = value_text(cell, digits=2)
        if kind == "random":
            text += f" ({len(cell.per_seed)} seeds)"
        out[kind] = text + (f" (K={row.k})" if kind == "retrieval" else "")
    return out


def summary_table(scores: list[str], results: list[str] | None = None) -> str:
    """The table as Markdown (pytablewriter), one row per score file."""
    from pytablewriter import MarkdownTableWriter
    from typepy import String

    results = results or []
    if results and len(results) != len(scores):
        raise RHError(f"--results takes one comparison folder per score file ({len(scores)}), got {len(results)}")
    rows = [model_row(path, results[i] if results else None) for i, path in enumerate(scores)]
    writer = MarkdownTableWriter(headers=HEADERS, value_matrix=[row.cells() for row in rows], margin=1,
                                 type_hints=[String] * len(HEADERS))  # numbers as written, not re-formatted
    return writer.dumps()


def _model_name(scores_path: Path) -> str:
    return str(read_score_provenance(scores_path).get("model") or scores_path.stem)
