"""Resumes never mix two runs, and a run killed at any point resumes to the result of an uninterrupted one.

The guard (``rh_eval.resume``) first on its own; then ``rh detect`` refusing the issue's exact case (another grid
in the same output) on the tiny model; then real SIGKILLs (``tests/fault_driver.py``) of ``rh detect`` and
``rh compare`` on SmolLM2, at several points including during file writes, each followed by a resume whose final
score file / leaderboard must equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import signal
import sys
import warnings
from pathlib import Path

import pytest

from conftest import run_cli
from rh_eval.cli import main
from rh_eval.resume import Journal, first_difference
from rh_models.errors import RHError

DRIVER = Path(__file__).with_name("fault_driver.py")


# --------------------------------------------------------------------------------------------- the guard


def test_first_difference_names_the_first_changed_setting_in_order():
    before = {"model": "m", "lengths": [500, 1000], "depths": [0, 50], "sha": "a"}
    assert first_difference(before, dict(before)) is None
    now = {"model": "m", "lengths": [300], "depths": [50], "sha": "b"}
    assert first_difference(before, now) == "lengths: was [500, 1000], now [300]"
    assert first_difference({"model": "m"}, {"model": "m", "backend": "vllm"}) == "backend: was (not set), now 'vllm'"


def test_journal_drops_a_torn_last_line_and_appends_cleanly(tmp_path, capsys):
    path = tmp_path / "s.tests.jsonl"
    journal = Journal(path, {"grid": [1]}, "rh detect")
    journal.append([{"key": "a"}, {"key": "b"}])
    with path.open("a") as handle:  # what a kill in the middle of the next append leaves
        handle.write('{"key": "c", "sco')
    again = Journal(path, {"grid": [1]}, "rh detect")
    assert [row["key"] for row in again.rows] == ["a", "b"]
    assert "half-written line" in capsys.readouterr().err
    again.append([{"key": "c"}])
    assert [row["key"] for row in Journal(path, {"grid": [1]}, "rh detect").rows] == ["a", "b", "c"]
    assert capsys.readouterr().err == ""  # the torn bytes are gone from the file, not just skipped


def test_journal_refuses_other_settings_a_missing_header_and_a_bad_middle_line(tmp_path):
    path = tmp_path / "s.tests.jsonl"
    Journal(path, {"lengths": [500], "depths": [0]}, "rh detect").append([{"key": "a"}])
    with pytest.raises(RHError, match=r"other settings \(lengths: was \[500\], now \[300\]\); pass --force"):
        Journal(path, {"lengths": [300], "depths": [0]}, "rh detect")
    old = tmp_path / "old.tests.jsonl"
    old.write_text('{"key": "a", "scores": null}\n')  # a work file from before settings were recorded
    with pytest.raises(RHError, match="records no settings"):
        Journal(old, {"lengths": [300]}, "rh detect")
    bad = tmp_path / "bad.tests.jsonl"
    bad.write_text('{"settings": {}}\n{"key": \n{"key": "b"}\n')
    with pytest.raises(RHError, match="line 2 is malformed"):
        Journal(bad, {}, "rh detect")


def test_compare_refuses_a_resume_with_other_settings_and_force_starts_over(tmp_path, monkeypatch):
    from rh_eval.compare import CompareConfig, check_settings, run_settings, start_over

    monkeypatch.setattr("rh_models.shape.model_config_sha256", lambda model, *rest: f"config-of-{model}")
    out = tmp_path / "out"
    out.mkdir()
    scores = out / "head_scores.json"  # a score file the user keeps in the output folder: --force leaves it
    scores.write_text('{"0-0": [0.5]}')
    config = CompareConfig(tasks=("rh_niah",), output_dir=out, model="m", head_scores=scores, limit=4)
    assert check_settings(out, run_settings(config, scores)) is False
    assert check_settings(out, run_settings(config, scores)) is True
    with pytest.raises(RHError, match=r"other settings \(limit: was 4, now 8\)"):
        check_settings(out, run_settings(CompareConfig(**{**config.__dict__, "limit": 8}), scores))
    monkeypatch.setattr("rh_models.shape.model_config_sha256", lambda model, *rest: "another architecture")
    with pytest.raises(RHError, match="model_config_sha256: was 'config-of-m', now 'another architecture'"):
        check_settings(out, run_settings(config, scores))
    (out / "conditions" / "full").mkdir(parents=True)
    (out / "leaderboard.md").write_text("old")
    (out / "notes.txt").write_text("mine")
    (out / "head_scores.meta.json").write_text("{}")  # the detection that made the kept score file stays too
    start_over(config)
    assert sorted(p.name for p in out.iterdir()) == ["head_scores.json", "head_scores.meta.json", "notes.txt"]
    inside = out / "plots" / "s.json"
    inside.parent.mkdir()
    inside.write_text('{"0-0": [0.5]}')
    with pytest.raises(RHError, match="lies inside .*plots, which --force would remove"):
        start_over(CompareConfig(**{**config.__dict__, "head_scores": inside}))
    assert inside.is_file()


def test_compare_checks_a_folder_before_detecting_and_refuses_conditions_without_a_record(tmp_path, monkeypatch):
    """Without --head-scores, detection runs first: a folder of another run must be refused before it, not after."""
    from rh_eval.compare import CompareConfig, check_settings, run_settings

    monkeypatch.setattr("rh_models.shape.model_config_sha256", lambda model, *rest: f"config-of-{model}")
    out = tmp_path / "out"
    (out / "conditions" / "full").mkdir(parents=True)
    scores = tmp_path / "s.json"
    scores.write_text('{"0-0": [0.5]}')
    config = CompareConfig(tasks=("rh_niah",), output_dir=out, model="m", limit=4, detect_lengths=(500,))
    (out / "conditions" / "full" / "results.json").write_text("{}")  # finished, but nothing says what made it
    with pytest.raises(RHError, match="finished conditions but no run.json"):
        check_settings(out, run_settings(config, scores))
    (out / "conditions" / "full" / "results.json").unlink()
    assert check_settings(out, run_settings(config, scores)) is False  # recorded, with the score file's hash
    assert check_settings(out, run_settings(config, None)) is True  # same run, detection not known yet: fine
    other = CompareConfig(**{**config.__dict__, "detect_lengths": (1000,)})
    with pytest.raises(RHError, match=r"detection: was \[\[500\], \[\], 3\], now \[\[1000\], \[\], 3\]"):
        check_settings(out, run_settings(other, None))


def test_compare_refuses_a_resume_with_other_versions_or_numerics(tmp_path, monkeypatch):
    """The settings fingerprint: software versions before the model loads, dtype/device/attention once it has."""
    from rh_eval.compare import RUN_FILE, CompareConfig, check_settings, run_settings
    from rh_eval.resume import settle

    monkeypatch.setattr("rh_models.shape.model_config_sha256", lambda model, *rest: f"config-of-{model}")
    out = tmp_path / "out"
    out.mkdir()
    scores = tmp_path / "s.json"
    scores.write_text('{"0-0": [0.5]}')
    config = CompareConfig(tasks=("rh_niah",), output_dir=out, model="m", head_scores=scores, limit=4)
    assert check_settings(out, run_settings(config, scores)) is False
    settle(out / RUN_FILE, "numerics", {"dtype": "torch.float32", "device": "cpu", "attention": "sdpa"}, "rh compare")
    assert check_settings(out, run_settings(config, scores)) is True  # numerics recorded: still the same run
    settle(out / RUN_FILE, "numerics", {"dtype": "torch.float32", "device": "cpu", "attention": "sdpa"}, "rh compare")
    with pytest.raises(RHError, match=r"numerics: was .*float32.*now .*bfloat16"):
        settle(out / RUN_FILE, "numerics", {"dtype": "torch.bfloat16", "device": "cpu", "attention": "sdpa"},
               "rh compare")
    with pytest.raises(RHError, match=r"batch_size: was 1, now 8"):
        check_settings(out, run_settings(CompareConfig(**{**config.__dict__, "batch_size": 8}), scores))
    with pytest.raises(RHError, match=r"prefix_reuse: was False, now True"):
        check_settings(out, run_settings(CompareConfig(**{**config.__dict__, "prefix_reuse": True}), scores))
    real = __import__("rh_eval.fingerprint", fromlist=["versions"]).versions
    monkeypatch.setattr("rh_eval.compare.versions", lambda backend: {**real(backend), "transformers": "9.9.9"})
    with pytest.raises(RHError, match=r"versions: was .*now .*9\.9\.9"):
        check_settings(out, run_settings(config, scores))


def test_the_fingerprint_names_what_decides_numerics(tiny_llama_dir):
    from rh_eval.fingerprint import fingerprint
    from rh_models.lm import RHHFLM

    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=1)
    found = fingerprint(lm)
    assert {k: found[k] for k in ("dtype", "device", "attention")} == {
        "dtype": "torch.float32", "device": "cpu", "attention": "sdpa"}
    assert set(found["versions"]) == {"torch", "transformers", "lm_eval", "rh_eval"}
    assert __import__("torch").__version__.startswith(found["versions"]["torch"])


def test_detect_refuses_a_resume_in_another_dtype(tmp_path, tiny_llama_dir, capsys):
    out = tmp_path / "d.json"
    base = ["detect", "--model", str(tiny_llama_dir), "--output", str(out), "--samples", "1", "--max-gen-toks", "2",
            "--lengths", "150", "--depths", "0"]
    assert main(base) == 0
    out.unlink()  # as if killed before the score file: the journal alone says what was done
    capsys.readouterr()
    assert main([*base, "--dtype", "bfloat16"]) == 2
    assert "other settings (fingerprint: was {'dtype': 'torch.float32'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- rh detect on the tiny model


def test_detect_refuses_another_grid_in_the_same_output_and_force_starts_over(tmp_path, tiny_llama_dir, capsys):
    """The issue's case: a second grid into the same --output was merged into one score file, silently."""
    out = tmp_path / "d.json"
    base = ["detect", "--model", str(tiny_llama_dir), "--output", str(out), "--samples", "1", "--max-gen-toks", "2"]
    assert main([*base, "--lengths", "150,200", "--depths", "0,100"]) == 0
    written = out.read_text()
    capsys.readouterr()
    assert main([*base, "--lengths", "150", "--depths", "50"]) == 2
    err = capsys.readouterr().err
    assert "other settings (lengths: was [150, 200], now [150])" in err and "--force" in err
    assert out.read_text() == written  # untouched
    with warnings.catch_warnings():  # transformers renamed past_key_values: passing the old name warns per call
        warnings.simplefilter("error", FutureWarning)
        assert main([*base, "--lengths", "150", "--depths", "50", "--force"]) == 0
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert (meta["lengths"], meta["depths"], meta["tests_seen"]) == ([150], [50], 1)



# ------------------------------------------------------------------------------- SIGKILL, then resume


def _rh(cwd: Path, *args: str, kill: tuple[str, int] | None = None):
    """``rh ARGS`` in ``cwd``; with ``kill``, SIGKILLed at that point (asserted: a kill that never fires is a bug)."""
    if kill is None:
        result = run_cli(Path(sys.executable).name, "-m", "rh_eval.cli", *args, cwd=cwd)
        assert result.returncode == 0, result.stderr[-2000:]
    else:
        result = run_cli(Path(sys.executable).name, str(DRIVER), kill[0], str(kill[1]), *args, cwd=cwd)
        assert result.returncode == -signal.SIGKILL, (kill, result.returncode, result.stderr[-2000:])
    return result


@pytest.mark.slow
def test_detect_killed_inside_a_batched_append_resumes_to_the_uninterrupted_result(tmp_path_factory, tiny_llama_dir):
    """rh demo batches a whole length per generate call: one append writes many rows, a kill keeps some of them."""
    args = ["detect", "--model", str(tiny_llama_dir), "--output", "d.json", "--lengths", "150,200", "--depths",
            "0,50,100", "--samples", "2", "--batch-lengths", "--max-gen-toks", "3", "--min-score", "-1"]
    reference, folder = tmp_path_factory.mktemp("batched-reference"), tmp_path_factory.mktemp("batched-killed")
    _rh(reference, *args)
    _rh(folder, *args, kill=("append", 1))  # half of the first length's six rows
    kept = len((folder / "d.tests.jsonl").read_text().splitlines()) - 2  # minus the settings and the torn line
    assert 0 < kept < 6
    _rh(folder, *args)
    assert json.loads((folder / "d.json").read_text()) == json.loads((reference / "d.json").read_text())
    assert _tests(folder) == _tests(reference) and len(_tests(folder)) == 12


DETECT = ["detect", "--model", "smollm2-135m", "--output", "d.json", "--lengths", "200,300", "--depths", "0,50,100",
          "--samples", "1", "--max-gen-toks", "12"]


@pytest.fixture(scope="module")
def detected(tmp_path_factory) -> Path:
    """An uninterrupted detection: the reference the killed-and-resumed one must equal."""
    folder = tmp_path_factory.mktemp("detect-reference")
    result = _rh(folder, *DETECT)
    assert "Warning" not in result.stderr, result.stderr[-2000:]  # the console: progress and results only
    return folder


def _tests(folder: Path) -> list[dict]:
    return json.loads((folder / "d.meta.json").read_text())["tests"]


@pytest.mark.smollm
def test_detect_killed_four_times_resumes_to_the_uninterrupted_result(tmp_path, detected):
    assert json.loads((detected / "d.meta.json").read_text())["tests_contributing"] >= 3  # real, non-empty scores
    _rh(tmp_path, *DETECT, kill=("replace:d.tests.jsonl", 1))  # while writing the settings header
    assert not (tmp_path / "d.tests.jsonl").exists()
    _rh(tmp_path, *DETECT, kill=("append", 2))  # in the middle of the second test's line
    lines = (tmp_path / "d.tests.jsonl").read_text().split("\n")
    assert len(lines) == 3 and lines[-1] and not lines[-1].endswith("}")  # header, one test, half a line

    refused = run_cli(Path(sys.executable).name, "-m", "rh_eval.cli", *DETECT[:-8], "--lengths", "300",
                      "--depths", "50", "--samples", "1", "--max-gen-toks", "12", cwd=tmp_path)
    assert refused.returncode == 2 and "other settings (lengths: was [200, 300], now [300])" in refused.stderr

    resumed = _rh(tmp_path, *DETECT, kill=("after-append", 2))  # between tests, two more done
    assert "half-written line" in resumed.stderr
    assert len((tmp_path / "d.tests.jsonl").read_text().splitlines()) == 1 + 3
    _rh(tmp_path, *DETECT, kill=("replace:d.json", 1))  # every test done, killed while writing the score file
    assert not (tmp_path / "d.json").exists()
    _rh(tmp_path, *DETECT)
    assert json.loads((tmp_path / "d.json").read_text()) == json.loads((detected / "d.json").read_text())
    assert _tests(tmp_path) == _tests(detected)


COMPARE = ["compare", "--model", "smollm2-135m", "--head-scores", "scores.json", "--tasks", "rh_niah_paper",
           "--k", "2", "--seeds", "2", "--output-dir", "out", "--no-plots", "--batch-size", "2",
           "--metadata", json.dumps({"lengths": [200], "depths": [0, 100], "samples": 1, "seed": 1})]


@pytest.mark.smollm
def test_compare_killed_three_times_resumes_to_the_uninterrupted_leaderboard(tmp_path_factory, detected):
    reference, folder = tmp_path_factory.mktemp("compare-reference"), tmp_path_factory.mktemp("compare-killed")
    for where in (reference, folder):
        (where / "scores.json").write_bytes((detected / "d.json").read_bytes())
    _rh(reference, *COMPARE)
    board = json.loads((reference / "out" / "leaderboard.json").read_text())
    niah = {row: values["rh_niah_paper/score,none"] for row, values in board["values"].items()}
    assert niah["full"] > niah["retrieval@2"]  # conditions differ: a mixed-up resume would show

    _rh(folder, *COMPARE, kill=("replace:run.json", 1))  # while writing the settings record
    _rh(folder, *COMPARE, kill=("replace:samples_*.jsonl", 2))  # while writing the second condition's samples
    conditions = folder / "out" / "conditions"
    assert (conditions / "full" / "results.json").is_file()
    assert not (conditions / "retrieval@2" / "results.json").exists()
    _rh(folder, *COMPARE, kill=("replace:leaderboard.md", 1))  # every condition done, while writing the table
    finished = _rh(folder, *COMPARE)
    assert finished.stdout.count("re-using") == 4
    for name in ("leaderboard.json", "leaderboard.md", "leaderboard.csv"):
        assert (folder / "out" / name).read_text() == (reference / "out" / name).read_text(), name
