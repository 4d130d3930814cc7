"""`rh plot niah`: cells from samples / folders / results JSON, heatmap files, CLI errors as one line."""

from __future__ import annotations

import json

import pytest

from rh_eval.cli import main as rh_main
from rh_eval.plots.niah import niah_cells, plot_niah_heatmap
from rh_models.errors import RHError

DATE = "2026-01-02T03-04-05.678901"


def _sample(length, depth, score, answer="x"):
    doc = {"length": length, "depth": depth, "cell": f"{length}-{depth}", "rh_answers": [answer],
           "rh_metric": "string_match"}
    return {"doc": doc, "score": score, "filtered_resps": [answer if score else "nope"]}


SAMPLES = [_sample(1000, 0, 1.0), _sample(1000, 0, 0.0), _sample(1000, 50, 1.0), _sample(2000, 0, 0.5),
           _sample(2000, 50, 0.0)]
CELLS = {(1000, 0): 0.5, (1000, 50): 1.0, (2000, 0): 0.5, (2000, 50): 0.0}


def _write_run(folder, task="rh_niah_paper", samples=SAMPLES, results=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"samples_{task}_{DATE}.jsonl").write_text("\n".join(json.dumps(s) for s in samples) + "\n")
    (folder / f"results_{DATE}.json").write_text(json.dumps(results or {"results": {task: {"score,none": 0.5}}}))
    return folder


def test_cells_from_samples_in_memory_jsonl_and_folder(tmp_path):
    assert niah_cells(SAMPLES) == CELLS
    run = _write_run(tmp_path / "out" / "model")
    assert niah_cells(run / f"samples_rh_niah_paper_{DATE}.jsonl") == CELLS
    assert niah_cells(tmp_path / "out") == CELLS
    # a results JSON without per-cell keys falls back to the samples written beside it
    assert niah_cells(run / f"results_{DATE}.json") == CELLS


def test_samples_without_score_are_rescored(tmp_path):
    bare = [{k: v for k, v in s.items() if k != "score"} for s in SAMPLES]
    assert niah_cells(bare)[(1000, 50)] == 1.0


def test_cells_from_results_with_cell_metrics(tmp_path):
    results = {"results": {"rh_niah_kv": {"score,none": 0.6, "score_cell_1000_000,none": 0.25,
                                          "score_cell_1000_000_stderr,none": 0.1, "score_cell_2000_100,none": 1.0,
                                          "score_cell_2000_000,none": float("nan")}}}  # a cell --limit skipped
    path = tmp_path / f"results_{DATE}.json"
    path.write_text(json.dumps(results))
    assert niah_cells(path) == {(1000, 0): 0.25, (2000, 100): 1.0}


def test_several_tasks_need_a_choice(tmp_path):
    run = _write_run(tmp_path / "a", task="rh_niah_kv")
    _write_run(run, task="rh_niah_multikey", samples=[_sample(500, 0, 1.0)])
    with pytest.raises(RHError, match="--task"):
        niah_cells(run)
    assert niah_cells(run, task="rh_niah_multikey") == {(500, 0): 1.0}
    with pytest.raises(RHError, match="no samples of task"):
        niah_cells(run, task="rh_niah_paper")


def test_heatmap_files(tmp_path):
    out = plot_niah_heatmap(CELLS, tmp_path / "h.png", title="t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    diff = plot_niah_heatmap({c: v - 0.5 for c, v in CELLS.items()}, tmp_path / "d.png", diff=True)
    assert diff.stat().st_size > 1000
    with pytest.raises(RHError):
        plot_niah_heatmap({}, tmp_path / "e.png")


def test_rh_plot_niah_cli(tmp_path, capsys):
    run = _write_run(tmp_path / "run")
    assert rh_main(["plot", "niah", str(run), "--out", str(tmp_path / "heat.png")]) == 0
    assert (tmp_path / "heat.png").stat().st_size > 1000
    assert "4 cells" in capsys.readouterr().out
    assert rh_main(["plot", "niah", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rh plot: error:") and "does not exist" in err and "\n" not in err
