"""`rh check` on crafted baselines: exit codes, both input formats, effects of masked rows, verdicts, missing rows,
--metric, paired tests, --update-baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rh_eval.cli import main
from rh_eval.leaderboard import ConditionResult, build_leaderboard, write_leaderboard

DATE = "2025-01-02T03-04-05.678901"


def lm_eval_results(path: Path, metrics: dict[str, dict[str, float]], higher: dict | None = None) -> Path:
    """A results file shaped like `lm_eval --output_path` writes it."""
    results = {task: {"alias": task, **{f"{m},none": v for m, v in ms.items()},
                      **{f"{m}_stderr,none": 0.01 for m in ms}} for task, ms in metrics.items()}
    higher = higher or {task: {m: True for m in ms} for task, ms in metrics.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"results": results, "higher_is_better": higher, "versions": {}, "n-shot": {}}))
    return path


def samples(path: Path, values: list[float], metric: str = "acc", hash_prefix: str = "doc") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        {"doc_id": i, "doc": {"q": "long document text"}, "filter": "none", "metrics": [metric], metric: v,
         "doc_hash": f"{hash_prefix}{i}", "resps": [["x"]]}
        for i, v in enumerate(values)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def check(*args: str) -> int:
    return main(["check", *args])


# ------------------------------------------------------------------------------------------- exit codes


def test_within_tolerance_is_0(tmp_path, capsys):
    run = lm_eval_results(tmp_path / "run.json", {"t": {"acc": 0.79}})
    base = lm_eval_results(tmp_path / "base.json", {"t": {"acc": 0.80}})
    assert check("--results", str(run), "--baseline", str(base)) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "within tolerance" in out


def test_drop_beyond_tolerance_is_1_with_table(tmp_path, capsys):
    run = lm_eval_results(tmp_path / "run.json", {"t": {"acc": 0.70, "f1": 0.5}})
    base = lm_eval_results(tmp_path / "base.json", {"t": {"acc": 0.80, "f1": 0.5}})
    assert check("--results", str(run), "--baseline", str(base), "--tolerance", "0.05") == 1
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if "REGRESSION" in l)
    assert "| acc " in line and "0.8000" in line and "0.7000" in line and "-0.1000" in line
    assert "f1" not in out.split("FAIL")[0]  # unchanged metrics are not listed
    assert check("--results", str(run), "--baseline", str(base), "--tolerance", "0.2") == 0


def test_lower_is_better_uses_lm_eval_flag(tmp_path, capsys):
    higher = {"t": {"perplexity": False}}
    base = lm_eval_results(tmp_path / "base.json", {"t": {"perplexity": 10.0}}, higher)
    worse = lm_eval_results(tmp_path / "worse.json", {"t": {"perplexity": 10.5}}, higher)
    better = lm_eval_results(tmp_path / "better.json", {"t": {"perplexity": 9.0}}, higher)
    assert check("--results", str(worse), "--baseline", str(base)) == 1
    assert "lower" in capsys.readouterr().out
    assert check("--results", str(better), "--baseline", str(base)) == 0
    assert "improved" in capsys.readouterr().out


def test_unusable_inputs_are_2(tmp_path, capsys):
    good = lm_eval_results(tmp_path / "good.json", {"t": {"acc": 0.5}})
    other = lm_eval_results(tmp_path / "other.json", {"u": {"acc": 0.5}})
    broken = tmp_path / "broken.json"
    broken.write_text("{\"results\": ")
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    assert check("--results", str(broken), "--baseline", str(good)) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert check("--results", str(listing), "--baseline", str(good)) == 2
    assert check("--results", str(good), "--baseline", str(other)) == 2
    assert "nothing in common" in capsys.readouterr().err
    assert check("--results", str(tmp_path / "nope.json"), "--baseline", str(good)) == 2
    assert check("--results", str(good), "--baseline", str(tmp_path / "nope.json")) == 2
    assert "--update-baseline" in capsys.readouterr().err
    assert check("--results", str(good), "--baseline", str(good), "--tolerance", "-1") == 2
    assert check("--results", str(good), "--baseline", str(good), "--metric", "bleu") == 2
    odd = tmp_path / "odd.json"  # a garbled higher_is_better is ignored (higher assumed), not a crash
    odd.write_text(json.dumps({"results": {"t": {"acc,none": 0.5}}, "higher_is_better": ["x"]}))
    assert check("--results", str(odd), "--baseline", str(good)) == 0
    assert check("--results", str(tmp_path), "--baseline", str(good)) == 2  # folder without results_*.json


def test_metric_filter(tmp_path):
    run = lm_eval_results(tmp_path / "run.json", {"t": {"acc": 0.5, "exact_match": 0.9}})
    base = lm_eval_results(tmp_path / "base.json", {"t": {"acc": 0.9, "exact_match": 0.9}})
    assert check("--results", str(run), "--baseline", str(base)) == 1
    assert check("--results", str(run), "--baseline", str(base), "--metric", "exact_match") == 0
    assert check("--results", str(run), "--baseline", str(base), "--metric", "t/exact_match,none") == 0
    assert check("--results", str(run), "--baseline", str(base), "--metric", "t/*") == 1


# ----------------------------------------------------------------------------------------- our format


def leaderboard(out: Path, niah: dict[str, float], seed_samples: dict[str, list[float]] | None = None) -> Path:
    """A compare-style folder: conditions/<name>/{results,condition}.json (+ samples) and leaderboard.json."""
    conditions = []
    for name, value in niah.items():
        kind, _, rest = name.partition("@")
        k, _, seed = rest.partition("-seed")
        record = {"name": name, "kind": kind, "k": int(k or 0), "seed": int(seed) if seed else None,
                  "heads": [[0, 1]], "method": "zero", "scope": "all"}
        folder = out / "conditions" / name
        folder.mkdir(parents=True)
        if seed_samples and name in seed_samples:
            samples(folder / "samples_rh_niah.jsonl", seed_samples[name])
        conditions.append(ConditionResult(record, {"rh_niah": {"acc,none": value}}, {"rh_niah": {"acc": True}},
                                          f"conditions/{name}"))
    write_leaderboard(build_leaderboard(conditions), out)
    return out / "leaderboard.json"


def test_leaderboard_rows_are_compared_row_by_row(tmp_path, capsys):
    base = leaderboard(tmp_path / "base", {"full": 0.9, "retrieval@6": 0.3, "random@6-seed0": 0.8, "random@6-seed1": 0.8})
    same = leaderboard(tmp_path / "same", {"full": 0.9, "retrieval@6": 0.31, "random@6-seed0": 0.8, "random@6-seed1": 0.8})
    worse = leaderboard(tmp_path / "worse", {"full": 0.9, "retrieval@6": 0.3, "random@6-seed0": 0.8, "random@6-seed1": 0.6})
    assert check("--results", str(same), "--baseline", str(base)) == 0
    capsys.readouterr()
    assert check("--results", str(worse.parent), "--baseline", str(base)) == 1  # a folder holding leaderboard.json
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if "REGRESSION" in l)
    assert line.startswith("| random@6 ") and "effect vs full" in line and "-0.1000" in line and "-0.2000" in line
    assert "random@6 rh_niah acc: effect −0.10 → −0.20: the mask changes this score more than it did" in out


BASE_ROWS = {"full": 0.9, "retrieval@6": 0.1, "random@6-seed0": 0.8, "random@6-seed1": 0.8}


def test_the_run_against_itself_passes(tmp_path, capsys):
    base = leaderboard(tmp_path / "base", BASE_ROWS)
    assert check("--results", str(base), "--baseline", str(base)) == 0
    assert "retrieval-below-random verdicts hold" in capsys.readouterr().out


def test_a_dead_mask_fails_although_its_score_went_up(tmp_path, capsys):
    """retrieval@6 back at full's value is what a mask that stopped working looks like: not an improvement."""
    base = leaderboard(tmp_path / "base", BASE_ROWS)
    dead = leaderboard(tmp_path / "dead", {**BASE_ROWS, "retrieval@6": 0.9})
    assert check("--results", str(dead), "--baseline", str(base)) == 1
    out = capsys.readouterr().out
    assert "retrieval@6 rh_niah acc: effect −0.80 → +0.00: the mask no longer changes this score" in out
    assert "verdict lost: retrieval@6 rh_niah acc: no longer below random@6" in out


def test_an_effect_that_doubled_fails(tmp_path, capsys):
    base = leaderboard(tmp_path / "base", {**BASE_ROWS, "retrieval@6": 0.5})
    doubled = leaderboard(tmp_path / "doubled", {**BASE_ROWS, "retrieval@6": 0.1})
    assert check("--results", str(doubled), "--baseline", str(base)) == 1
    assert "effect −0.40 → −0.80: the mask changes this score more than it did" in capsys.readouterr().out


def test_the_full_row_keeps_lm_evals_direction_and_effects_follow_it(tmp_path, capsys):
    """The whole run shifted up by 0.05: full improved, every effect unchanged -> OK."""
    base = leaderboard(tmp_path / "base", BASE_ROWS)
    shifted = leaderboard(tmp_path / "shifted", {name: value + 0.05 for name, value in BASE_ROWS.items()})
    assert check("--results", str(shifted), "--baseline", str(base)) == 0
    assert "improved" in capsys.readouterr().out


def test_a_verdict_lost_within_tolerance_still_fails(tmp_path, capsys):
    base = leaderboard(tmp_path / "base", {"full": 1.0, "retrieval@6": 0.2, "random@6-seed0": 0.3})
    run = leaderboard(tmp_path / "run", {"full": 1.0, "retrieval@6": 0.2, "random@6-seed0": 0.15})
    assert check("--results", str(run), "--baseline", str(base), "--tolerance", "0.2") == 1
    assert "verdict lost: retrieval@6 rh_niah acc: no longer below random@6 (baseline 0.2000 vs 0.3000, now 0.2000 vs " \
           "0.1500)" in capsys.readouterr().out


def test_a_missing_row_fails_unless_allowed(tmp_path, capsys):
    base = leaderboard(tmp_path / "base", BASE_ROWS)
    without = leaderboard(tmp_path / "without", {n: v for n, v in BASE_ROWS.items() if n != "retrieval@6"})
    assert check("--results", str(without), "--baseline", str(base)) == 1
    out = capsys.readouterr().out
    assert "retrieval@6 rh_niah acc: absent from the run" in out and "missing" in out
    assert check("--results", str(without), "--baseline", str(base), "--allow-missing", "retrieval@*") == 0
    assert check("--results", str(without), "--baseline", str(base), "--allow-missing", "retrieval@6 rh_niah/acc") == 0
    assert check("--results", str(without), "--baseline", str(base), "--allow-missing", "random@*") == 1
    no_control = leaderboard(tmp_path / "no-control", {n: v for n, v in BASE_ROWS.items() if not n.startswith("random")})
    assert check("--results", str(no_control), "--baseline", str(base), "--allow-missing", "random@6*") == 0


def test_a_baseline_without_full_cannot_judge_effects(tmp_path, capsys):
    base = leaderboard(tmp_path / "base", {"retrieval@6": 0.1, "random@6-seed0": 0.8})
    assert check("--results", str(base), "--baseline", str(base)) == 2
    assert "has no full value" in capsys.readouterr().err


def test_plain_lm_eval_run_matches_leaderboard_full_row(tmp_path):
    base = leaderboard(tmp_path / "base", {"full": 0.9, "retrieval@6": 0.3, "random@6-seed0": 0.8})
    good = lm_eval_results(tmp_path / "run" / "results.json", {"rh_niah": {"acc": 0.9}})
    bad = lm_eval_results(tmp_path / "bad" / "results.json", {"rh_niah": {"acc": 0.5}})
    assert check("--results", str(good), "--baseline", str(base)) == 0
    assert check("--results", str(bad), "--baseline", str(base)) == 1


# ------------------------------------------------------------------------------------------ paired tests


def test_paired_test_on_lm_eval_samples_beside_results(tmp_path, capsys):
    run = lm_eval_results(tmp_path / "run" / "model" / f"results_{DATE}.json", {"t": {"acc": 0.5}})
    base = lm_eval_results(tmp_path / "base" / "model" / f"results_{DATE}.json", {"t": {"acc": 1.0}})
    samples(run.parent / f"samples_t_{DATE}.jsonl", [1.0] * 10 + [0.0] * 10)
    samples(base.parent / f"samples_t_{DATE}.jsonl", [1.0] * 20)
    samples(base.parent / f"samples_t_cot_{DATE}.jsonl", [0.0] * 20)  # another task, must not be picked up
    assert check("--results", str(run), "--baseline", str(base)) == 1
    line = next(l for l in capsys.readouterr().out.splitlines() if "REGRESSION" in l)
    assert "McNemar n=20" in line and f"{2 * 0.5**10:.3g}" in line


def test_no_paired_test_when_documents_differ(tmp_path, capsys):
    run = lm_eval_results(tmp_path / "run" / f"results_{DATE}.json", {"t": {"acc": 0.5}})
    base = lm_eval_results(tmp_path / "base" / f"results_{DATE}.json", {"t": {"acc": 1.0}})
    samples(run.parent / f"samples_t_{DATE}.jsonl", [1.0, 0.0], hash_prefix="other")
    samples(base.parent / f"samples_t_{DATE}.jsonl", [1.0, 1.0])
    assert check("--results", str(run), "--baseline", str(base)) == 1
    assert "McNemar" not in capsys.readouterr().out


def test_random_rows_are_paired_by_document_with_seeds_averaged(tmp_path, capsys):
    values = {"full": 1.0, "random@6-seed0": 1.0, "random@6-seed1": 1.0}
    base = leaderboard(tmp_path / "base", values, {n: [1.0] * 8 for n in values})
    run = leaderboard(
        tmp_path / "run", {**values, "random@6-seed0": 0.5, "random@6-seed1": 0.5},
        {"full": [1.0] * 8, "random@6-seed0": [1.0] * 4 + [0.0] * 4, "random@6-seed1": [0.0] * 4 + [1.0] * 4},
    )
    assert check("--results", str(run), "--baseline", str(base)) == 1
    line = next(l for l in capsys.readouterr().out.splitlines() if "REGRESSION" in l)
    # 8 documents (not 16 seed x doc pairs), each with effect -0.5 against 0: exact sign-flip p = 2 / 2**8
    assert "permutation n=8" in line and f"{2 / 2**8:.3g}" in line


def test_niah_placeholders_are_not_scores_in_a_check(tmp_path, capsys):
    """A per-length column: a doc of another length reports -1.0 for it, which must never be paired or averaged."""
    def niah_samples(path, scores):
        lines = [{"doc_id": i, "doc_hash": f"d{i}", "filter": "none", "doc": {"metric_keys": [f"score_len_{length}"]},
                  "metrics": ["score_len_500"], "score_len_500": score if length == 500 else -1.0}
                 for i, (length, score) in enumerate(scores)]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))

    grid = [(500, 1.0), (1000, 1.0), (500, 1.0), (1000, 1.0)]
    run = lm_eval_results(tmp_path / "run" / f"results_{DATE}.json", {"t": {"score_len_500": 1.0}})
    base = lm_eval_results(tmp_path / "base" / f"results_{DATE}.json", {"t": {"score_len_500": 1.0}})
    niah_samples(run.parent / f"samples_t_{DATE}.jsonl", grid)
    niah_samples(base.parent / f"samples_t_{DATE}.jsonl", [(500, 1.0), (1000, 0.0), (500, 1.0), (1000, 0.0)])
    baseline = tmp_path / "ci" / "b.json"
    assert check("--update-baseline", "--results", str(base), "--baseline", str(baseline)) == 0
    compact = [json.loads(l) for l in (tmp_path / "ci" / "b.samples" / "samples_t.jsonl").read_text().splitlines()]
    assert compact[1] == {"doc_id": 1, "filter": "none", "doc_hash": "d1", "metrics": []}  # its placeholder dropped
    capsys.readouterr()
    assert check("--results", str(run), "--baseline", str(baseline)) == 0


# ------------------------------------------------------------------------------------------ baseline update


def test_update_baseline_is_deliberate_and_keeps_compact_samples(tmp_path, capsys):
    first = lm_eval_results(tmp_path / "a" / f"results_{DATE}.json", {"t": {"acc": 1.0}})
    samples(first.parent / f"samples_t_{DATE}.jsonl", [1.0] * 12)
    second = lm_eval_results(tmp_path / "b" / f"results_{DATE}.json", {"t": {"acc": 0.5}})
    samples(second.parent / f"samples_t_{DATE}.jsonl", [1.0] * 6 + [0.0] * 6)
    baseline = tmp_path / "ci" / "baseline.json"

    assert check("--update-baseline", "--results", str(first), "--baseline", str(baseline)) == 0
    assert "written" in capsys.readouterr().out
    assert json.loads(baseline.read_text())["results"]["t"]["acc,none"] == 1.0
    compact = [json.loads(l) for l in (tmp_path / "ci" / "baseline.samples" / "samples_t.jsonl").read_text().splitlines()]
    assert compact[0] == {"doc_id": 0, "filter": "none", "doc_hash": "doc0", "metrics": ["acc"], "acc": 1.0}

    assert check("--results", str(second), "--baseline", str(baseline)) == 1
    assert "McNemar n=12" in capsys.readouterr().out

    assert check("--update-baseline", "--results", str(second), "--baseline", str(baseline)) == 0
    assert "replaced" in capsys.readouterr().out
    assert check("--results", str(second), "--baseline", str(baseline)) == 0
    assert not [p for p in (tmp_path / "ci").iterdir() if p.name.startswith(".")]


def test_update_baseline_from_leaderboard_rewrites_sample_folders(tmp_path, capsys):
    values = {"full": 1.0, "random@6-seed0": 1.0}
    run = leaderboard(tmp_path / "run", values, {n: [1.0] * 5 for n in values})
    baseline = tmp_path / "ci" / "lb.json"
    assert check("--update-baseline", "--results", str(run), "--baseline", str(baseline)) == 0
    data = json.loads(baseline.read_text())
    assert data["conditions"]["random@6-seed0"]["samples_dir"] == "lb.samples/random@6-seed0"
    assert (tmp_path / "ci" / "lb.samples" / "random@6-seed0" / "samples_rh_niah.jsonl").is_file()
    worse = leaderboard(tmp_path / "worse", {"full": 1.0, "random@6-seed0": 0.0}, {"full": [1.0] * 5, "random@6-seed0": [0.0] * 5})
    capsys.readouterr()
    assert check("--results", str(worse), "--baseline", str(baseline)) == 1
    assert "permutation n=5" in capsys.readouterr().out  # per-document effects: -1 on each of 5 documents
    with pytest.raises(SystemExit):  # --results is required, also for an update
        check("--update-baseline", "--baseline", str(baseline))
