"""The checks of a comparison in words, from its leaderboard's numbers: the shape check, CoT vs direct, KV budgets.

Usage::

    from rh_eval.verdicts import shape_checks, cot_line, kv_line, headline
    for check in shape_checks(board, "rh_niah_paper"):
        print(check.line())      # "shape check (rh_niah_paper/score,none): retrieval@8 0.083 vs full 0.917 and ..."
    cot_line(board, "rh_factsum_cot", "rh_factsum")   # how CoT and direct answers moved under each mask
    headline(board)              # the board without NIAH's per-length / per-depth columns

Why a module of its own: ``rh demo`` prints these lines and ``rh report`` writes them on its page, for any
finished comparison; both read them off the same :class:`~rh_eval.leaderboard.Leaderboard`, and neither needs the
model stack to do so (``rh report`` renders a folder without importing torch's attention code).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from rh_eval.leaderboard import KV_KINDS, Leaderboard, PairedTest, headline_column, row_name


# ---------------------------------------------------------------------------------------- headline table

BREAKDOWN_PREFIXES = ("score_len_", "score_depth_", "score_cell_")  # NIAH per-length/-depth/-cell keys


def headline(board: Leaderboard) -> Leaderboard:
    """The board without NIAH's per-length/per-depth breakdown columns (they stay in leaderboard.*)."""
    columns = [c for c in board.columns if not c.metric.startswith(BREAKDOWN_PREFIXES)]
    return replace(board, columns=columns or board.columns)


# ------------------------------------------------------------------------------------------- shape check


@dataclass
class ShapeCheck:
    """Did masking the top-K retrieval heads hurt NIAH more than K random heads (and below full)?"""

    column: str
    k: int
    full: float
    retrieval: float
    random_mean: float
    random_seeds: dict[str, float]
    test: PairedTest | None = None  # retrieval@K vs random@K on the same documents
    method: str | None = None  # boards of several ablation methods: the method of the rows checked
    ranking: str | None = None  # rh compare --rankings: the ranking whose row is checked (``copy@8``)

    @property
    def holds(self) -> bool:
        return self.retrieval < self.full and self.retrieval < self.random_mean

    @property
    def rows(self) -> tuple[str, str]:
        """The retrieval row checked and its random control, as the leaderboard names them."""
        return (row_name("retrieval", self.k, method=self.method, ranking=self.ranking),
                row_name("random", self.k, method=self.method))

    def line(self) -> str:
        retrieval, random = self.rows
        seeds = ", ".join(f"{value:.3f}" for value in self.random_seeds.values())
        verdict = "expected shape holds" if self.holds else "expected shape does NOT hold"
        tested = "" if self.test is None else (
            f"; {retrieval} vs {random}: {self.test.effect:+.3f}, {self.test.test} "
            f"p={self.test.p_value:.3g} on {self.test.n_docs} documents")
        return (f"shape check ({self.column}): {retrieval} {self.retrieval:.3f} vs full {self.full:.3f} and "
                f"{random} mean {self.random_mean:.3f} (seeds: {seeds}) -> {verdict}{tested}")


def shape_checks(board: Leaderboard, task: str) -> list[ShapeCheck]:
    """One check per retrieval row (per K, and per method on a board of several) from the leaderboard's numbers
    (none without NIAH, full or a random row)."""
    column = headline_column(board, task)
    full = next((board.cell(r.name, column) for r in board.rows if r.kind == "full"), None) if column else None
    if column is None or full is None:
        return []
    checks = []
    for row in (r for r in board.rows if r.kind == "retrieval"):
        control = row_name("random", row.k, method=row.method)
        retrieval, random = board.cell(row.name, column), board.cell(control, column)
        if retrieval is not None and random is not None:
            test = next((t for t in board.tests if (t.row, t.against, t.column) == (row.name, control, column.id)),
                        None)
            checks.append(ShapeCheck(column.id, row.k, full.value, retrieval.value, random.value, dict(random.per_seed),
                                     test, row.method, row.ranking))
    return checks


def cot_line(board: Leaderboard, cot_task: str, direct_task: str) -> str | None:
    """How much chain-of-thought and direct answering lost under each retrieval@K (informational)."""
    from rh_eval.plots.conditions import cot_column_pairs

    pairs = [(c, d) for c, d in cot_column_pairs(board) if c.task == cot_task and d.task == direct_task]
    if not pairs:
        return None
    cot, direct = pairs[0]
    parts = []
    for row in (r for r in board.rows if r.kind in ("retrieval", "random")):
        c, d = board.cell(row.name, cot), board.cell(row.name, direct)
        if c is not None and d is not None and c.drop is not None and d.drop is not None:
            parts.append(f"{row.name}: CoT {-c.drop:+.3f}, direct {-d.drop:+.3f}")
    full_c = next((board.cell(r.name, cot) for r in board.rows if r.kind == "full"), None)
    full_d = next((board.cell(r.name, direct) for r in board.rows if r.kind == "full"), None)
    if not parts or full_c is None or full_d is None:
        return None
    return (f"CoT vs direct ({cot.metric}): full CoT {full_c.value:.3f}, direct {full_d.value:.3f}; "
            f"change vs full -- " + "; ".join(parts))


def kv_line(board: Leaderboard, task: str) -> str | None:
    """At each KV budget, the retrieval ranking against random rankings on ``task`` (informational)."""
    column = headline_column(board, task)
    if column is None:
        return None
    parts = []
    for row in (r for r in board.rows if r.kind in KV_KINDS):
        cell = board.cell(row.name, column)
        if cell is not None and row.kv_budget is not None:
            parts.append(f"{row.name} {cell.value:.3f} at {100 * row.kv_budget:.1f} % of the KV cache")
    return f"KV budgets ({column.id}): " + "; ".join(parts) if parts else None
