"""``rh report``: one self-contained HTML page per comparison, the page a person opens, prints and shares.

Usage::

    rh report demo-out                      # (re)builds demo-out/report.html from a finished rh demo / rh compare folder

    from rh_eval.report import write_report
    path = write_report(Path("out"))        # what rh compare and rh demo call when they finish

Why: a finished comparison holds the right things scattered over 30-40 files (``leaderboard.*``, 20+ PNGs under
``plots/``, a summary, a folder per condition). What a researcher sends a colleague, or reads after a night's
sweep, is one page: the question, the table with its intervals and paired tests, the verdicts in words, every
figure, the exact heads of every condition and where the run came from. The page is one file (styles inline,
figures embedded as data URIs, no network) so that it opens from disk anywhere; its numbers are
``leaderboard.json``'s. A leaderboard of an older format (before per-document intervals and paired tests) is
rebuilt from ``conditions/`` by the function that wrote it (:func:`rh_eval.leaderboard.build_leaderboard`), and the
page says so. A folder without what the page needs is refused in one line naming what it lacks.

Layout: Jinja2 (lm-eval's own dependency) fills ``templates/report.html.j2``; this module only gathers what the
folder holds.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rh_eval.leaderboard import (
    FORMAT_VERSION,
    KV_KINDS,
    TESTS_NOTE,
    ConditionResult,
    Leaderboard,
    build_leaderboard,
    is_number,
)
from rh_eval.plots.conditions import cot_column_pairs
from rh_eval.run_files import DEMO_FILE, DETECTED_SCORES, RUN_FILE, samples_by_task
from rh_eval.verdicts import BREAKDOWN_PREFIXES, cot_line, headline, kv_line, shape_checks
from rh_models.atomic import write_text_atomic
from rh_models.errors import RHError
from rh_models.files import read_json
from rh_models.heads import format_head, score_meta_path

REPORT_FILE = "report.html"
TEMPLATE = "report.html.j2"
# figures by file name, in the page's order: (prefix, section title); NIAH breakdown curves go last
FIGURE_GROUPS = (
    ("head_scores", "Head scores (what ranks the heads)"),
    ("niah_", "NIAH: score per context length and needle depth, per condition and its difference from full"),
    ("dose_", "Score against heads masked"),
    ("kv_budget_", "Score against KV budget"),
    ("cot_vs_direct_", "Chain of thought against direct answers"),
)
BREAKDOWN_GROUP = "Per-length and per-depth NIAH curves"


@dataclass(frozen=True)
class Figure:
    """One embedded figure: its section, its file (relative to the folder) and its bytes as a data URI."""

    group: str
    name: str
    data_uri: str


@dataclass(frozen=True)
class Table:
    """A table of the page: header texts and rows of ``(text, sort value, column id)`` cells."""

    headers: list[str]
    rows: list[list[tuple[str, float | None, str | None]]]

    @classmethod
    def of_texts(cls, table: tuple[list[str], list[list[str]]]) -> "Table":
        """A table of text cells only (no values to sort by), e.g. :meth:`Leaderboard.tests_matrix`."""
        headers, matrix = table
        return cls(headers, [[(text, None, None) for text in row] for row in matrix])


# ------------------------------------------------------------------------------------------------ reading


NEEDS = {"leaderboard.json": "the numbers", RUN_FILE: "the settings: model, tasks, versions"}


def check_folder(folder: Path) -> None:
    """One line naming everything the page needs that ``folder`` lacks (rh compare / rh demo write it all)."""
    if not folder.is_dir():
        raise RHError(f"{folder} is not a folder (give the --output-dir of a finished rh compare or rh demo)")
    lacking = [f"{name} ({what})" for name, what in NEEDS.items() if not (folder / name).is_file()]
    if lacking:
        raise RHError(f"{folder} lacks {' and '.join(lacking)}: not a finished rh compare / rh demo folder")


def read_board(folder: Path) -> tuple[Leaderboard, str | None]:
    """The folder's leaderboard and a note when it had to be rebuilt (an older format), or one line on what lacks."""
    path = folder / "leaderboard.json"
    data = read_json(path, "leaderboard")
    board = Leaderboard.from_json(data, str(path))
    version = data.get("version", 1)
    if version >= FORMAT_VERSION:
        return board, None
    names = [name for row in board.rows for name in row.conditions]
    lacking = [name for name in names if not (folder / "conditions" / name / "results.json").is_file()]
    if lacking:
        raise RHError(f"{path} is format version {version}, without per-document intervals and paired tests, and "
                      f"{folder / 'conditions' / lacking[0]} lacks the results.json to rebuild it from")
    board = build_leaderboard([ConditionResult.from_dir(folder / "conditions" / name, root=folder) for name in names])
    return board, (f"leaderboard.json is format version {version}, written before per-document intervals and paired "
                   "tests: the tables below were rebuilt from conditions/ (the same values, with intervals and tests)")


def read_settings(folder: Path) -> dict[str, Any]:
    """``run.json``: the comparison's settings (model, tasks, grid, versions), or one line on what lacks."""
    path = folder / RUN_FILE
    record = read_json(path, "resume record")
    settings = record.get("settings") if isinstance(record, dict) else None
    if not isinstance(settings, dict) or "model" not in settings or "tasks" not in settings:
        raise RHError(f"{path} holds no settings with a model and tasks")
    return settings


def runs(folder: Path) -> list[dict[str, Any]]:
    """The runs that did work (provenance): ``rh demo``'s in ``demo.json`` (its wall time includes detection), else
    ``rh compare``'s in ``run.json``."""
    for name in (DEMO_FILE, RUN_FILE):
        record = read_json(folder / name) if (folder / name).is_file() else {}
        found = [run for run in record.get("runs", []) if isinstance(run, dict) and run.get("model_loaded", True)]
        if found:
            return found
    return []


def figures(folder: Path, board: Leaderboard) -> list[Figure]:
    """Every PNG under ``plots/``, embedded: grouped as :data:`FIGURE_GROUPS` orders them (others last), and a
    group's per-condition figures (the NIAH maps) in the board's order of conditions, each before its difference."""
    from rh_eval.plots.conditions import safe_name

    conditions = [safe_name(name) for row in board.rows for name in row.conditions]
    groups = [title for _, title in FIGURE_GROUPS] + [BREAKDOWN_GROUP, "Other figures"]

    def order(path: Path) -> tuple[int, int, str]:
        group = next((title for prefix, title in FIGURE_GROUPS if path.stem.startswith(prefix)), groups[-1])
        if group == FIGURE_GROUPS[2][1] and any(f"_{prefix}" in path.stem for prefix in BREAKDOWN_PREFIXES):
            group = BREAKDOWN_GROUP
        stem = path.stem.removesuffix("_minus_full")
        condition = next((i for i, name in enumerate(conditions) if stem.endswith(f"_{name}")), len(conditions))
        return groups.index(group), condition, path.stem

    found = []
    for path in sorted((folder / "plots").glob("*.png"), key=order):
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        found.append(Figure(groups[order(path)[0]], os.path.relpath(path, folder), f"data:image/png;base64,{data}"))
    return found


# ----------------------------------------------------------------------------------------------- the page


def leaderboard_table(board: Leaderboard) -> Table:
    """The leaderboard's cells as every table shows them, each metric cell with its exact value and column id."""
    headers, matrix = board.display_matrix()
    fixed = len(headers) - len(board.columns)  # condition, seeds (and KV budget)
    rows = []
    for row, texts in zip(board.rows, matrix):
        cells: list[tuple[str, float | None, str | None]] = [(texts[0], None, None), (texts[1], len(row.seeds), None)]
        if board.has_kv:
            cells.append((texts[2], row.kv_budget, None))
        for column, text in zip(board.columns, texts[fixed:]):
            cell = board.cell(row.name, column)
            cells.append((text, None if cell is None else cell.value, column.id))
        rows.append(cells)
    return Table(headers, rows)


def question(board: Leaderboard, settings: dict[str, Any], folder: Path) -> str:
    """The question in one paragraph: model (config hash), tasks, conditions, how the heads were chosen."""
    config = str(settings.get("model_config_sha256") or "")[:12]
    rows = [f"{row.name} ({len(row.seeds)} seeds)" if len(row.seeds) > 1 else row.name for row in board.rows]
    text = (f"What happens to {', '.join(settings['tasks'])} when heads of {settings['model']}"
            f"{f' (config sha256 {config}…)' if config else ''} are silenced? {len(board.rows)} rows, "
            f"{len(board.conditions)} conditions on the same loaded model: {', '.join(rows)}.")
    records = list(board.conditions.values())
    rankings = settings.get("rankings") if isinstance(settings.get("rankings"), dict) else {}
    text += _ranked_by(records, settings, folder, rankings)
    masked = [r for r in records if r.get("kind") in ("retrieval", "random")]
    if masked:
        methods = ", ".join(dict.fromkeys(str(r.get("method")) for r in masked))
        drawn = ("from the same layers" if settings.get("random_match") == "layer" else
                 "from those in no ranking's top K" if rankings else "from the other heads")
        masks = "<ranking>@K masks that ranking's" if rankings else "retrieval@K masks the"
        text += (f" {masks} K top-scoring heads, random@K K heads drawn per seed {drawn}; a masked head's output is "
                 f"replaced by {methods} "
                 f"(scope {settings.get('scope', 'all')}).")
    if any(r.get("kind") in KV_KINDS for r in records):
        text += (f" KV budgets by head: {'<ranking>' if rankings else 'retrieval'}-kv@P% lets the top P % of heads "
                 "keep the full context, random-kv@P% P % drawn at random, streaming none; every other head keeps a "
                 "sink and a recent window.")
    if settings.get("tie_break") == "random":
        text += " Where a ranking ran past the heads that scored above 0, the rest were drawn at random (tie_break)."
    return text


def _ranked_by(records: list[dict[str, Any]], settings: dict[str, Any], folder: Path, rankings: dict[str, str]) -> str:
    """Which score file(s) the heads are ranked by, with their hashes, and the detection grid where it ran here."""
    files = {r.get("ranking"): Path(r["mask"]["head_scores"]).name for r in records
             if r.get("ranking") and (r.get("mask") or {}).get("head_scores")}
    if rankings:
        named = [f"{name} ({files.get(name, 'its score file')}, sha256 {str(digest)[:12]}…)"
                 for name, digest in rankings.items()]
        return f" Heads are ranked by {len(named)} rankings, each row named after its own: {', '.join(named)}."
    scores = next((r["mask"]["head_scores"] for r in records if (r.get("mask") or {}).get("head_scores")),
                  DETECTED_SCORES if (folder / DETECTED_SCORES).is_file() else None)  # a detection in the folder
    if not scores:
        return ""
    digest = str(settings.get("head_scores_sha256") or "")[:12]
    text = f" Heads are ranked by their retrieval scores in {Path(scores).name}" + (f" (sha256 {digest}…)" if digest else "")
    meta = score_meta_path(folder / DETECTED_SCORES)
    detection = read_json(meta) if meta.is_file() and Path(scores).name == DETECTED_SCORES else {}
    if isinstance(detection, dict) and detection.get("lengths"):
        text += (f", a detection (rh detect) on {detection.get('needles', 'paper')} needles at lengths "
                 f"{', '.join(map(str, detection['lengths']))} tokens × depths "
                 f"{', '.join(map(str, detection.get('depths', [])))} % ({_count(detection.get('tests_seen'), 'test')})")
    return text + "."


def _count(n: Any, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def verdicts(board: Leaderboard) -> list[str]:
    """The checks in words, from the board's numbers: the shape check per NIAH task, KV budgets, CoT vs direct."""
    tasks = list(dict.fromkeys(column.task for column in board.columns))
    lines = [check.line() for task in tasks if "niah" in task for check in shape_checks(board, task)]
    if board.has_kv:
        lines += [line for task in tasks if "niah" in task and (line := kv_line(board, task))]
    pairs = dict.fromkeys((cot.task, direct.task) for cot, direct in cot_column_pairs(board))
    lines += [line for cot, direct in pairs if (line := cot_line(board, cot, direct))]
    return lines


def conditions_table(board: Leaderboard, folder: Path) -> list[dict[str, Any]]:
    """Per condition: its exact heads, method, scope, seed, KV budget and links to its lm-eval files."""
    found = []
    for row in board.rows:
        for name in row.conditions:
            record = board.conditions.get(name, {})
            kv = record.get("kv") or {}
            heads = kv.get("selected_heads") if record.get("kind") in KV_KINDS else record.get("heads")
            where = folder / str(record.get("samples_dir") or Path("conditions") / name)
            files = [where / "results.json", *(path for runs_ in samples_by_task(where).values() for _, path in runs_)]
            found.append({
                "name": name, "row": row.name, "seed": record.get("seed"),
                "heads": " ".join(format_head(tuple(h)) for h in heads or []),
                "heads_role": "keep the full context" if record.get("kind") in KV_KINDS else "masked",
                "method": record.get("method"), "scope": record.get("scope"),
                "kv_budget": f"{100 * record['kv_budget']:.1f} %" if is_number(record.get("kv_budget")) else "",
                "tie_break": record.get("tie_break"), "unscored": record.get("unscored_heads"),
                "links": [(path.name, os.path.relpath(path, folder)) for path in files if path.is_file()],
            })
    return found


def provenance(settings: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Command lines, start and wall times, machines, versions and the settings' fingerprint."""
    text = json.dumps(settings, sort_keys=True, ensure_ascii=False)
    return {
        "runs": runs(folder),
        "versions": settings.get("versions") or {},
        "numerics": settings.get("numerics") or {},
        "weights": settings.get("weights"),
        "fingerprint": hashlib.sha256(text.encode()).hexdigest()[:16],
        "settings": json.dumps(settings, indent=2, ensure_ascii=False),
    }


def render_report(folder: str | Path) -> str:
    """The page of a finished folder, as HTML text (nothing written)."""
    from jinja2 import Environment, FileSystemLoader

    folder = Path(folder)
    check_folder(folder)
    settings = read_settings(folder)
    board, board_note = read_board(folder)
    main = headline(board)
    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True,
                      trim_blocks=True, lstrip_blocks=True)
    groups: dict[str, list[Figure]] = {}
    for figure in figures(folder, board):
        groups.setdefault(figure.group, []).append(figure)
    return env.get_template(TEMPLATE).render(
        title=f"rh-eval: {Path(str(settings['model'])).name} on {', '.join(settings['tasks'])}",
        question=question(board, settings, folder), board_note=board_note, verdicts=verdicts(board),
        table=leaderboard_table(main),
        full_table=leaderboard_table(board) if main.columns != board.columns else None,
        cells_note=board.cells_note(), tests=Table.of_texts(main.tests_matrix()), tests_note=TESTS_NOTE,
        groups=groups, conditions=conditions_table(board, folder), provenance=provenance(settings, folder),
        demo=(folder / DEMO_FILE).is_file(),
    )


def write_report(folder: str | Path) -> Path:
    """``report.html`` in ``folder``, written atomically; returns its path."""
    return write_text_atomic(Path(folder) / REPORT_FILE, render_report(folder))


# ---------------------------------------------------------------------------------------------------- CLI


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="a finished rh compare / rh demo --output-dir")


def run(args: argparse.Namespace) -> int:
    path = write_report(Path(args.folder))
    print(f"rh report: wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0
