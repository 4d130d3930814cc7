"""``rh heads summary``: the paper's universal-and-sparse table from score files and comparison folders."""

from __future__ import annotations

import json

from rh_eval.cli import main
from rh_eval.leaderboard import ConditionResult, build_leaderboard, write_leaderboard


def _scores(path, shape, strong):
    layers, heads = shape
    path.write_text(json.dumps({f"{l}-{h}": [strong.get((l, h), 0.01)] for l in range(layers) for h in range(heads)}))
    path.with_suffix(".meta.json").write_text(json.dumps({"model": path.stem}))
    return path


def _comparison(folder, full, retrieval, randoms):
    def result(name, kind, k, seed, score):
        record = {"name": name, "kind": kind, "k": k, "seed": seed, "heads": []}
        return ConditionResult(record, {"rh_niah_paper": {"score,none": score}}, {"rh_niah_paper": {"score": True}})

    conditions = [result("full", "full", 0, None, full), result("retrieval@2", "retrieval", 2, None, retrieval)]
    conditions += [result(f"random@2-seed{s}", "random", 2, s, v) for s, v in enumerate(randoms)]
    write_leaderboard(build_leaderboard(conditions), folder, overwrite=True)
    return folder


def test_summary_table_over_two_models(tmp_path, capsys):
    a = _scores(tmp_path / "model_a.json", (4, 5), {(2, 1): 0.6, (3, 0): 0.3})  # 2 of 20 heads > 0.1
    b = _scores(tmp_path / "model_b.json", (10, 2), {(5, 1): 0.2})
    folder = _comparison(tmp_path / "cmp_a", 0.9, 0.2, [0.85, 0.8, 0.9])
    assert main(["heads", "summary", str(a), str(b), "--results", str(folder), str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    row_a = next(line for line in lines if line.startswith("| model_a"))
    assert "20 (4 × 5)" in row_a and "10.0%" in row_a and "5.0%" in row_a  # > 0.1 and > 0.5
    assert "2-1 (0.60), 3-0 (0.30)" in row_a and "0.62–0.88" in row_a  # layers 2 and 3 of 4, at their middles
    assert "| 0.90 " in row_a and "0.20 (K=2)" in row_a and "0.85 (3 seeds)" in row_a
    assert "| model_b" in "\n".join(lines)


def test_summary_needs_one_results_folder_per_score_file(tmp_path, capsys):
    a = _scores(tmp_path / "a.json", (2, 2), {})
    assert main(["heads", "summary", str(a), str(a), "--results", str(tmp_path)]) == 2
    assert "one comparison folder per score file" in capsys.readouterr().err
