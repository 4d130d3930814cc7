"""Every command in the ``sh`` blocks of the README and of docs/ is run by a test, as a user types it, or says why
it cannot be.

The README and every docs/*.md page are read here: each fenced ```sh (or ```bash) block, backslash continuations
joined, comment lines and trailing ``# ...`` comments dropped, whitespace collapsed to one space. Every command found
must be a key of ``COMMANDS`` and every key must still be on some page (``test_every_readme_command_has_an_entry``):
a command added to a page without a test fails, and so does a table entry whose command left them all. A command
shown on several pages has one entry.

Each entry says how its command is checked:

* ``Run`` -- run through ``conftest.run_cli`` (this venv's program in a subprocess, under the memory limit), in
  one shared tmp folder that is its working directory, so relative paths (``scores.json``, ``out/``,
  ``demo-out``, ``g3``, ``a.json``) mean what they mean in the README. Commands that read what another one wrote
  name it in ``needs`` and run after it (groups of such commands run in two lanes, two processes at a time on
  two cores, see ``Workspace``); ``prepare`` builds inputs the README takes for granted
  (``ci/baseline.json``, ``a.json``/``b.json``). ``$(...)`` is run first, as the shell would. Then only these
  substitutions, each listed in the entry under its rule:

  - MODEL: ``smollm2-135m`` -> a tiny random llama with SmolLM2's tokenizer (``tiny_llama_dir``) and
    ``gemma3-270m`` -> a tiny random Gemma-3 (one sliding-window and one global layer, one KV head, SmolLM2's
    tokenizer), wherever the command's point is the workflow (files, tables, masks, resume), not what a trained
    model answers. The real models' answers are tested in test_compare / test_gemma3 / test_recording.
  - GRID: a smaller grid or fewer examples (``--lengths``, ``--depths``, ``--metadata``, ``--limit``,
    ``--seeds``, the demo's ``--detect-*`` / ``--niah-*``), or fewer tasks (a skipped optional task of the demo,
    ``--tasks`` without the CoT pair: a random model's chains of thought only ever stop at ``max_gen_toks``), or
    fewer ``--rankings`` (the tiny model's 8 heads cannot hold four rankings' top K and a random control besides).
  - K: a ``--k`` above the tiny models' 8 heads becomes 2.
  - OUT: ``--output_path`` added to an ``lm_eval`` run, the only way to read its results JSON.
  - TIE: a tiny random model answers no needle, so its detection ranks no head: commands that rank heads on it
    (``top:K``, ``top:P%``, ``random:K`` and its exclusion of retrieval heads, ``random_match=layer``, ``rh compare``
    / ``rh demo``) get ``--tie-break random`` (``rh compare`` / ``rh demo``) or ``tie_break=random``
    (``--model_args``), which draws the places at random from the unscored heads and records them (``tie_break``,
    ``unscored_heads``). Without it the same command is refused in one line (checked in ``check_lm_top``).

  Each run's real outputs are checked: exit code, the files it writes (parsed), key lines it prints.
* ``CheckedBy`` -- too heavy to repeat here (``make test``, the benchmark's fresh-process memory runs); the named
  test runs the same code path. Its existence is checked here, and the command's arguments still parse.
* ``ParseOnly`` -- needs a GPU, vLLM or the hub: ``PARSE_ONLY`` lists them. Checked at parse level: lm-eval's
  own CLI parser (or accelerate's / ours) takes the arguments, our mask arguments pass ``parse_mask_args``, the
  remaining model arguments are ones the model class accepts, and the tasks exist in task_configs/.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import rh_error_lines, run_cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def PAGES() -> list[Path]:
    """The README and every page of docs/: the pages whose commands must run."""
    return [README, *sorted((ROOT / "docs").glob("*.md"))]

PNG = b"\x89PNG\r\n\x1a\n"
# One thread per command: torch's two OpenMP threads on a 2-core machine shared with other jobs made a tiny model's
# decoding step 20x slower (9.4 s vs 0.4 s for 32 tokens); the commands themselves are unchanged.
ENV = {"OMP_NUM_THREADS": "1"}


# --- reading the README --------------------------------------------------------------------------------------

def _strip_comment(line: str) -> str:
    """``line`` up to a ``#`` that starts a shell comment (at the start or after a space, outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def readme_commands(text: str) -> list[str]:
    """The commands of the ```sh / ```bash blocks of ``text``, normalised (see the module docstring), in order."""
    commands = []
    for block in re.findall(r"^```(?:sh|bash)\n(.*?)^```", text, flags=re.M | re.S):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            command = " ".join(_strip_comment(line).split())
            if command:
                commands.append(command)
    return commands


# --- the table -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sub:
    """One named change to a command's arguments: set option ``flag`` (or ``--model_args`` key) to ``value``."""

    rule: str
    flag: str
    value: str

    def apply(self, argv: list[str], paths: dict[str, str]) -> list[str]:
        value = self.value.format(**paths)
        argv = list(argv)
        if not self.flag.startswith("-"):  # a key of --model_args
            i = argv.index("--model_args") + 1
            pairs = [p for p in argv[i].split(",") if not p.startswith(f"{self.flag}=")]
            argv[i] = ",".join([f"{self.flag}={value}", *pairs])
        elif self.flag in argv:
            argv[argv.index(self.flag) + 1] = value
        else:
            argv += [self.flag, value]
        return argv

    def __str__(self) -> str:
        return f"{self.rule} {self.flag}={self.value.replace('{{', '{').replace('}}', '}')}"


@dataclass(frozen=True)
class Run:
    name: str
    subs: tuple[Sub, ...] = ()
    check: Callable | None = None
    needs: tuple[str, ...] = ()
    prepare: Callable | None = None
    smollm: bool = True  # the tiny models carry SmolLM2's tokenizer, so they need the converted model too

    def how(self) -> str:
        return "run" + (f" with {'; '.join(map(str, self.subs))}" if self.subs else " as written")


@dataclass(frozen=True)
class CheckedBy:
    test: str
    why: str

    def how(self) -> str:
        return f"checked by {self.test} ({self.why}); recipe or arguments checked here"


@dataclass(frozen=True)
class ParseOnly:
    why: str

    def how(self) -> str:
        return f"parse-level only: {self.why}"


TINY, TINY_ARG = Sub("MODEL", "--model", "{tiny_llama}"), Sub("MODEL", "pretrained", "{tiny_llama}")
TINY_GEMMA3 = Sub("MODEL", "--model", "{tiny_gemma3}")
TIE, TIE_ARG = Sub("TIE", "--tie-break", "random"), Sub("TIE", "tie_break", "random")
NIAH_GRID = Sub("GRID", "--metadata", '{{"lengths": [200], "depths": [0, 100], "samples": 1}}')
DEMO_GRID = tuple(Sub("GRID", flag, value) for flag, value in (
    ("--detect-lengths", "200"), ("--detect-depths", "0,100"), ("--detect-samples", "1"), ("--niah-lengths", "200"),
    ("--niah-depths", "0,100"), ("--niah-samples", "1"), ("--limit", "2"), ("--seeds", "1")))


def _out(name: str) -> Sub:
    return Sub("OUT", "--output_path", f"lm-out/{name}")


# --- checks of real outputs ----------------------------------------------------------------------------------

def _json(path: Path):
    assert path.is_file(), f"{path} was not written"
    return json.loads(path.read_text())


def _score_file(path: Path, shape=(2, 4)) -> dict:
    scores = _json(path)
    assert sorted(scores) == sorted(f"{l}-{h}" for l in range(shape[0]) for h in range(shape[1])), scores
    return scores


def _board(folder: Path, rows: list[str], column: str) -> dict:
    board = _json(folder / "leaderboard.json")
    assert [row["name"] for row in board["rows"]] == rows
    assert all(column in board["values"][row] for row in rows), board["values"]
    return board


def _lm_results(ws, name: str) -> dict:
    [path] = list((ws.dir / "lm-out" / name).rglob("results_*.json"))
    return _json(path)


def _check_tie(record: dict, heads: list, scores: Path) -> None:
    """TIE: the record says the tie rule drew places, and ``unscored_heads`` counts the chosen ``heads`` that have no
    score above 0 in ``scores`` -- at least one (on a tiny detection, all of them): the rule was needed."""
    from rh_models.heads import HeadScores

    unscored = sum(HeadScores.load(scores).mean(tuple(head)) <= 0 for head in heads)
    assert record["tie_break"] == "random" and record["unscored_heads"] == unscored > 0, (record, unscored)


SCORE_GRID = (Sub("GRID", "--lengths", "200"), Sub("GRID", "--depths", "0,100"), Sub("GRID", "--samples", "1"))
REPEAT_GRID = (Sub("GRID", "--lengths", "32"), Sub("GRID", "--samples", "2"))


def check_score(result, ws, score: str, tests: int) -> None:
    """docs/scores.md: a score file of every head, whose .meta.json names the score, its parameters and its tests."""
    name = result.args[result.args.index("--output") + 1]
    scores = _score_file(ws.dir / name)
    meta = _json((ws.dir / name).with_suffix(".meta.json"))
    # every test counts for a mass score; copy keeps only the tests answered right (none, on a tiny random model)
    kept = tests if score != "copy" else meta["tests_contributing"]
    assert all(len(values) == kept for values in scores.values()), (kept, scores)
    assert meta["score"]["name"] == score and meta["score"]["parameters"] and meta["tests_seen"] == tests, meta["score"]
    assert f"wrote {name}" in result.stdout


def check_models(result, ws):
    names = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert names == ["smollm2-135m", "gemma3-270m"], result.stdout


def check_detect(result, ws):
    _score_file(ws.dir / "scores.json")
    meta = _json(ws.dir / "scores.meta.json")
    assert (meta["lengths"], meta["depths"], meta["tests_seen"]) == ([200], [0, 100], 2)
    assert (ws.dir / "heads.png").read_bytes()[:8] == PNG
    assert "tests: 2 run" in result.stdout and "wrote heads.png" in result.stdout


def check_heads_show(result, ws):
    first, *rows = result.stdout.splitlines()
    assert first.startswith("2 layers x 4 heads; > 0.1: ")
    assert sorted(row.split("\t")[0] for row in rows) == sorted(_score_file(ws.dir / "scores.json"))


def check_heads_compare(result, ws):
    lines = result.stdout.splitlines()
    assert lines[0].startswith("top-10 overlap: ") and lines[1].startswith("Kendall tau over all heads: "), lines


def _summary_rows(stdout: str) -> list[list[str]]:
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in stdout.splitlines()
            if line.startswith("|") and "---" not in line]
    return rows[1:]  # without the header


def _check_summary(result, models, contrasts):
    rows = _summary_rows(result.stdout)
    assert [row[0] for row in rows] == models, result.stdout
    for row, (retrieval, seeds) in zip(rows, contrasts):
        assert row[1] == "8 (2 × 4)" and row[6] == "rh_niah_paper", row
        assert row[8].endswith(f"(K={retrieval})") and row[9].endswith(f"({seeds} seeds)"), row


def check_summary_universal(result, ws):
    _check_summary(result, [ws.models["tiny_llama"], ws.models["tiny_gemma3"]], [(1, 1), (2, 3)])


def check_summary_ab(result, ws):
    _check_summary(result, [ws.models["tiny_llama"], ws.models["tiny_gemma3"]], [(1, 1), (1, 1)])


def prepare_ab(ws):
    """a.json, b.json: the two models' score files (with their .meta.json, which names the model)."""
    for name, folder in (("a", "demo-out"), ("b", "g3")):
        for suffix in (".json", ".meta.json"):
            shutil.copy(ws.dir / folder / f"head_scores{suffix}", ws.dir / f"{name}{suffix}")


def check_compare(result, ws):
    out = ws.dir / "out"
    board = _board(out, ["full", "retrieval@2", "random@2"], "rh_niah_paper/score,none")
    assert "rh_factsum_cot/exact_match,strict-match" in board["values"]["full"]  # rh_cot's pairs ran too
    conditions = {p.name for p in (out / "conditions").iterdir()}
    assert conditions == {"full", "retrieval@2", "random@2-seed0"}
    retrieval = _json(out / "conditions" / "retrieval@2" / "condition.json")
    assert len(retrieval["heads"]) == 2
    _check_tie(retrieval, retrieval["heads"], ws.dir / "scores.json")
    for name in conditions:
        samples = (out / "conditions" / name / "samples_rh_niah_paper.jsonl").read_text().splitlines()
        assert sorted(json.loads(s)["doc"]["depth"] for s in samples) == [0, 100]
    assert (out / "plots" / "niah_rh_niah_paper_full.png").read_bytes()[:8] == PNG
    assert "leaderboard written" in result.stdout


def prepare_baseline(ws):
    """ci/baseline.json as docs/ci.md makes it, from this comparison."""
    made = run_cli("rh", "check", "--update-baseline", "--results", "out/leaderboard.json", "--baseline",
                   "ci/baseline.json", cwd=ws.dir, env=ENV)
    assert made.returncode == 0 and (ws.dir / "ci" / "baseline.json").is_file(), made.stderr[-2000:]


def check_check(result, ws):
    assert result.stdout.startswith("rh check: OK: ") and "within 0.02" in result.stdout, result.stdout
    # the gate is not vacuous: the same command against a baseline that was 0.5 better exits 1 (a copy: checks run
    # after the commands, and docs/ci.md's own baseline step replaces ci/baseline.json meanwhile)
    made = run_cli("rh", "check", "--update-baseline", "--results", "out/leaderboard.json", "--baseline",
                   "better-baseline.json", cwd=ws.dir, env=ENV)
    assert made.returncode == 0, made.stderr[-2000:]
    data = _json(ws.dir / "better-baseline.json")
    data["values"]["full"]["rh_niah_paper/score,none"] += 0.5
    (ws.dir / "better-baseline.json").write_text(json.dumps(data))
    worse = run_cli("rh", "check", "--results", "out/leaderboard.json", "--baseline", "better-baseline.json",
                    "--tolerance", "0.02", cwd=ws.dir, env=ENV)
    assert worse.returncode == 1 and "rh_niah_paper" in worse.stdout, worse.stdout + worse.stderr


def check_plot(result, ws):
    assert (ws.dir / "heatmap.png").read_bytes()[:8] == PNG
    assert result.stdout.startswith("heatmap.png: 2 cells, mean score "), result.stdout


def _check_demo(folder: Path, model: str, cot: bool):
    meta = _json(folder / "head_scores.meta.json")
    assert meta["model"] == model and (meta["lengths"], meta["depths"]) == ([200], [0, 100])
    _score_file(folder / "head_scores.json")
    board = _board(folder, ["full", "retrieval@1", "random@1"], "rh_niah_paper/score,none")  # K: ~3 % of 8 heads
    assert ("rh_factsum_cot/exact_match,strict-match" in board["values"]["full"]) is cot
    for name in ("summary.md", "demo.json", "plots/head_scores.png", "plots/niah_rh_niah_paper_full.png"):
        assert (folder / name).is_file(), name
    assert "shape check (rh_niah_paper/score,none): retrieval@1 " in (folder / "summary.md").read_text()
    retrieval = _json(folder / "conditions" / "retrieval@1" / "condition.json")
    _check_tie(retrieval, retrieval["heads"], folder / "head_scores.json")


def check_demo(result, ws):
    _check_demo(ws.dir / "demo-out", ws.models["tiny_llama"], cot=True)
    assert "shape check (rh_niah_paper/score,none)" in result.stdout and "CoT vs direct (exact_match)" in result.stdout


def check_demo_again(result, ws):
    assert "everything re-used" in result.stdout and "Loading weights" not in result.stderr, result.stdout


def check_demo_gemma3(result, ws):
    _check_demo(ws.dir / "g3", ws.models["tiny_gemma3"], cot=False)
    assert "shape check (rh_niah_paper/score,none)" in result.stdout


def check_compare_gemma3(result, ws):
    _board(ws.dir / "g3cmp", ["full", "retrieval@2", "random@2"], "rh_niah_paper/score,none")
    seeds = sorted(p.name for p in (ws.dir / "g3cmp" / "conditions").iterdir() if p.name.startswith("random"))
    assert seeds == ["random@2-seed0", "random@2-seed1", "random@2-seed2"]
    retrieval = _json(ws.dir / "g3cmp" / "conditions" / "retrieval@2" / "condition.json")
    run = _json(ws.dir / "g3cmp" / "run.json")
    assert len(retrieval["heads"]) == 2 and run["settings"]["metadata"]["seed"] == 1
    assert run["settings"]["tie_break"] == "random"
    _check_tie(retrieval, retrieval["heads"], ws.dir / "g3" / "head_scores.json")


def check_lm_kv(result, ws):
    kv = _lm_results(ws, "kv10")["config"]["rh_kv"]
    assert (kv["full_heads"], len(kv["selected_heads"]), kv["sink"], kv["window"]) == ("top:10%", 1, 4, 64)
    assert len(kv["full_query_heads"]) == 2 and 0 < kv["kv_budget"] < 1  # one head of 8 keeps its GQA group of 2
    _check_tie(kv, kv["selected_heads"], ws.dir / "scores.json")


def check_demo_kv(result, ws):
    rows = ["full", "retrieval@1", "random@1", "streaming", "retrieval-kv@25%", "random-kv@25%"]
    board = _board(ws.dir / "demo-kv", rows, "rh_niah_paper/score,none")
    budgets = {row["name"]: row["kv_budget"] for row in board["rows"]}
    assert budgets["full"] == 1.0 and 0 < budgets["streaming"] < budgets["retrieval-kv@25%"] < 1
    assert "KV budget" in (ws.dir / "demo-kv" / "summary.md").read_text() and "KV budgets (" in result.stdout
    assert (ws.dir / "demo-kv" / "plots" / "kv_budget_rh_niah_paper_score_none.png").read_bytes()[:8] == PNG
    # the README's own --tie-break random: the mask's top:1 and the KV share's top:25% both drew unscored heads
    conditions, scores = ws.dir / "demo-kv" / "conditions", ws.dir / "demo-kv" / "head_scores.json"
    retrieval, kv = (_json(conditions / name / "condition.json") for name in ("retrieval@1", "retrieval-kv@25%"))
    _check_tie(retrieval, retrieval["heads"], scores)
    _check_tie(kv, kv["kv"]["selected_heads"], scores)


def check_compare_kv_gemma3(result, ws):
    board = _board(ws.dir / "g3kv", ["full", "streaming", "retrieval-kv@25%", "random-kv@25%"], "rh_niah_paper/score,none")
    streaming = next(row for row in board["rows"] if row["name"] == "streaming")
    assert 0 < streaming["kv_budget"] < 1  # the global layer streams; the sliding layer keeps its own window
    kv = _json(ws.dir / "g3kv" / "conditions" / "streaming" / "condition.json")["kv"]
    assert list(kv["sliding_layers"]) == ["0"] and (ws.dir / "g3kv" / "head_scores.json").is_file()
    retrieval = _json(ws.dir / "g3kv" / "conditions" / "retrieval-kv@25%" / "condition.json")
    _check_tie(retrieval, retrieval["kv"]["selected_heads"], ws.dir / "g3kv" / "head_scores.json")


def _means_file(path: Path, chat: bool) -> dict:
    from rh_models.head_means import HeadMeans

    means = HeadMeans.load(path, 2, 4, 16)  # every head of the tiny llama, or an error
    reference = means.provenance["reference"]
    assert (reference["kind"], reference["chat_template"]) == ("niah_haystack", chat) and means.provenance["tokens"] > 0
    return means.provenance


def check_means(result, ws):
    _means_file(ws.dir / "means.json", chat=False)
    assert "2 x 4 heads, mean over" in result.stdout


def check_means_chat(result, ws):
    _means_file(ws.dir / "methods-means.json", chat=True)


def check_compare_methods(result, ws):
    rows = ["full", *(f"{kind}@2 ({method})" for method in ("zero", "uniform", "mean") for kind in ("retrieval", "random"))]
    board = _board(ws.dir / "methods", rows, "rh_niah_paper/score,none")
    record = board["conditions"]["retrieval@2-mean"]
    assert record["mask"]["head_means"] == "methods-means.json" and record["heads"] == board["conditions"][
        "retrieval@2-zero"]["heads"]
    assert _json(ws.dir / "methods" / "run.json")["settings"]["method"] == "zero,uniform,mean"
    _check_tie(record, record["heads"], ws.dir / "methods" / "head_scores.json")


def check_lm_mean(result, ws):
    mask = _lm_results(ws, "mean8")["config"]["rh_mask"]
    assert (mask["spec"], mask["method"], len(mask["heads"]), mask["head_means"]) == (
        "top:2", "mean", 2, "methods-means.json")
    _check_tie(mask, mask["heads"], ws.dir / "methods" / "head_scores.json")


def check_lm_top(result, ws):
    data = _lm_results(ws, "top6")
    mask = data["config"]["rh_mask"]
    assert (mask["spec"], mask["method"], len(mask["heads"]), mask["head_scores"]) == ("top:6", "uniform", 6, "scores.json")
    assert "score,none" in data["results"]["rh_niah_paper"] and len(data["n-samples"]) == 1
    _check_tie(mask, mask["heads"], ws.dir / "scores.json")
    # without the TIE rule the same command is refused, in one line, before the model loads
    argv = [",".join(p for p in arg.split(",") if p != "tie_break=random") for arg in result.args[1:]]
    argv[argv.index("--output_path") + 1] = "lm-out/refused"
    refused = run_cli(Path(result.args[0]).name, *argv, cwd=ws.dir, env=ENV)
    errors = rh_error_lines(refused.stderr)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert len(errors) == 1 and "scores.json ranks no head: " in errors[0], refused.stderr[-3000:]
    assert "Loading weights" not in refused.stderr, refused.stderr[-3000:]
    assert not (ws.dir / "lm-out" / "refused").exists()


def check_lm_random(result, ws):
    data = _lm_results(ws, "random6")
    mask = data["config"]["rh_mask"]
    assert (mask["spec"], mask["seed"], mask["random_match"], len(mask["heads"])) == ("random:6", 2, "layer", 6)
    assert (mask["tie_break"], mask["unscored_heads"]) == ("random", None)  # TIE: the layers matched are drawn
    assert {"rh_vartrack_cot", "rh_kvhop_cot", "rh_factsum_cot", "rh_vartrack", "rh_kvhop", "rh_factsum"} <= set(data["results"])


def check_lm_record(result, ws):
    meta = _json(ws.dir / "out" / "scores.meta.json")
    assert meta["tests_seen"] == 2 and meta["labels"]["depth"] == [0, 100]
    _score_file(ws.dir / "out" / "scores.json")
    assert (ws.dir / "out" / "scores.events.jsonl").is_file()


def check_lm_stock_hf(result, ws):
    data = _lm_results(ws, "hf")
    assert data["config"]["model"] == "hf" and "rh_mask" not in data["config"]
    from rh_models.zoo import resolve_pretrained  # the converted copy: models/<alias>/<version>-<gguf hash>

    assert Path(data["config"]["model_args"]["pretrained"]) == Path(resolve_pretrained("smollm2-135m"))
    assert data["results"]["rh_niah_paper"]["score,none"] >= 0.5  # the real model finds the needle at 200 tokens


# --- checks of the docs/ pages' commands ---------------------------------------------------------------------

def check_ci_detect(result, ws):
    _score_file(ws.dir / "ci" / "head_scores.json")
    assert _json(ws.dir / "ci" / "head_scores.meta.json")["lengths"] == [200]


def check_ci_compare(result, ws):
    board = _board(ws.dir / "rh-out", ["full", "retrieval@2", "random@2"], "rh_niah_paper/score,none")
    assert "rh_vartrack/exact_match,strict-match" in board["values"]["full"]  # the direct task ran beside NIAH
    import hashlib

    settings = _json(ws.dir / "rh-out" / "run.json")["settings"]  # the resume guard covers the given score file
    assert settings["head_scores_sha256"] == hashlib.sha256((ws.dir / "ci" / "head_scores.json").read_bytes()).hexdigest()
    assert settings["tasks"] == ["rh_niah", "rh_vartrack"], settings["tasks"]


def check_ci_baseline(result, ws):
    # docs/ci.md's step 3 after the README's `rh check` made ci/baseline.json from out/: it says it replaced one
    assert result.stdout.strip() == ("rh check: baseline ci/baseline.json replaced from rh-out/leaderboard.json"), \
        result.stdout
    baseline = _json(ws.dir / "ci" / "baseline.json")
    assert [row["name"] for row in baseline["rows"]] == ["full", "retrieval@2", "random@2"]
    assert "rh_vartrack/exact_match,strict-match" in baseline["values"]["full"]
    assert any((ws.dir / "ci" / "baseline.samples").iterdir())
    again = run_cli("rh", "check", "--results", "rh-out", "--baseline", "ci/baseline.json", cwd=ws.dir, env=ENV)
    assert again.returncode == 0 and again.stdout.startswith("rh check: OK: "), again.stdout + again.stderr


def check_lm_factsum(result, ws):
    data = _lm_results(ws, "factsum")
    assert data["config"]["model"] == "hf" and data["config"]["model_args"]  # stock lm-eval
    for task in ("rh_factsum_cot", "rh_factsum"):
        assert data["n-samples"][task] == {"original": 50, "effective": 1}, data["n-samples"]  # cot_docs: 50
        assert 0.0 <= data["results"][task]["exact_match,flexible-extract"] <= 1.0
    assert data["config"].get("apply_chat_template") or data.get("chat_template"), sorted(data)


def check_niah_doc(result, ws):
    [path] = list((ws.dir / "niah-out").rglob("results_*.json"))
    data = _json(path)
    assert 0.0 <= data["results"]["rh_niah_paper"]["score,none"] <= 1.0
    [samples] = list((ws.dir / "niah-out").rglob("samples_rh_niah_paper_*.jsonl"))
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert sorted(row["doc"]["depth"] for row in rows) == [0, 100]
    assert all("<|im_start|>" in row["arguments"]["gen_args_0"]["arg_0"] for row in rows)  # the chat template


def check_niah_plot(result, ws):
    assert (ws.dir / "niah.png").read_bytes()[:8] == PNG
    assert result.stdout.startswith("niah.png: 2 cells, mean score "), result.stdout


def check_niah_variants(result, ws):
    data = _lm_results(ws, "variants")
    for task in ("rh_niah_kv", "rh_niah_multikey", "rh_niah_multivalue", "rh_niah_multiquery"):
        assert data["n-samples"][task]["effective"] == 1 and 0.0 <= data["results"][task]["score,none"] <= 1.0


# --- docs/rankings.md: rh heads import / rh heads compare ----------------------------------------------------

DUO_MISTRAL = "attn_patterns/Mistral-7B-Instruct-v0.2/lr=0.02-reg=0.05-ctx=1000_32000-multi_passkey10"
TINY_GATES = [[0.9, 0.1], [0.0, 0.6]]  # tiny llama: 2 layers x 2 KV heads (SmolLM2's file would be 30 x 3)
HEADS_CSV = "layer,head,score\n0,1,0.8\n1,3,0.5\n0,2,0.2\n"


def _write_gates(path: Path, gates: list[list[float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(f"{g:.18e}" for g in row) + "\n" for row in gates))  # numpy.savetxt's layout


def _mistral_gates() -> list[list[float]]:
    import random

    rng = random.Random(0)
    return [[rng.choice([1.0, round(rng.random(), 4), -1e-4]) for _ in range(8)] for _ in range(32)]


def prepare_duo_mistral(ws):
    """A pattern folder laid out as DuoAttention's repository has it (synthetic gates of Mistral-7B's 32 x 8 shape)."""
    folder = ws.dir / DUO_MISTRAL
    _write_gates(folder / "full_attention_heads.tsv", _mistral_gates())
    (folder / "config.json").write_text(json.dumps({"model_name": "models/Mistral-7B-Instruct-v0.2", "threshold": 0.5}))


def check_import_duo_mistral(result, ws):
    gates, scores = _mistral_gates(), _score_file(ws.dir / "duo-mistral.json", (32, 32))
    assert all(scores[f"{l}-{h}"] == [gates[l][h // 4]] for l in range(32) for h in range(32))
    meta = _json(ws.dir / "duo-mistral.meta.json")
    assert (meta["n_kv_heads"], meta["per_kv_head"], meta["shape_from"]) == (8, True, "--layers/--heads/--kv-heads")
    assert meta["duo_config"]["threshold"] == 0.5 and "its 4 query heads" in result.stdout


def prepare_duo_tiny(ws):
    _write_gates(ws.dir / "full_attention_heads.tsv", TINY_GATES)


def check_import_duo(result, ws):
    scores = _score_file(ws.dir / "duo.json")
    assert all(scores[f"{l}-{h}"] == [TINY_GATES[l][h // 2]] for l in range(2) for h in range(4))
    meta = _json(ws.dir / "duo.meta.json")
    assert (meta["model"], meta["n_kv_heads"], meta["heads_unlisted"]) == (ws.models["tiny_llama"], 2, 0)
    assert result.stdout.splitlines()[-1] == "wrote duo.json and duo.meta.json"


def prepare_heads_csv(ws):
    (ws.dir / "heads.csv").write_text(HEADS_CSV)


def check_import_csv(result, ws):
    scores = _score_file(ws.dir / "mine.json")
    assert (scores["0-1"], scores["1-3"], scores["0-2"], scores["0-0"]) == ([0.8], [0.5], [0.2], [])
    meta = _json(ws.dir / "mine.meta.json")
    assert (meta["heads_listed"], meta["heads_unlisted"], meta["header"]) == (3, 5, ["layer", "head", "score"])


def check_heads_compare_n(result, ws):
    data = _json(ws.dir / "agreement.json")
    assert [r["name"] for r in data["rankings"]] == ["copy", "duo", "mine"]
    assert data["kv"]["source"] == f"--model {ws.models['tiny_llama']}" and data["kv"]["top"] == 5  # 10 / group 2
    pairs = {(p["a"], p["b"]): p for p in data["pairs"]}
    assert list(pairs) == [("copy", "duo"), ("copy", "mine"), ("duo", "mine")]
    assert pairs[("copy", "duo")]["query"]["top_a"] == 0  # TIE: the tiny detection ranks no head: it shares none
    duo_mine = pairs[("duo", "mine")]  # mine's 3 heads are among duo's 6 above 0; per KV head, the same 3 groups
    assert (duo_mine["query"]["overlap"], duo_mine["query"]["jaccard"], duo_mine["kv"]["jaccard"]) == (3, 0.5, 1.0)
    assert (ws.dir / "agreement.png").read_bytes()[:8] == PNG
    assert "| duo  | mine | 3/10" in result.stdout and "wrote agreement.png" in result.stdout


def check_compare_rankings(result, ws):
    """docs/compare-rankings.md on the rankings docs/scores.md's detections wrote: on the tiny model the copy score
    ranks no head (it answers no needle: TIE draws both places), the attention score ranks every head it saw."""
    from rh_models.heads import HeadScores

    out = ws.dir / "rankings"
    rows = ["full", "copy@2", "attention@2", "random@2", "streaming", "copy-kv@25%", "attention-kv@25%", "random-kv@25%"]
    board = _board(out, rows, "rh_niah_paper/score,none")
    records = board["conditions"]
    _check_tie(records["copy@2"]["mask"], records["copy@2"]["heads"], ws.dir / "copy.json")
    attention = HeadScores.load(ws.dir / "attention.json")
    means = {(l, h): attention.mean((l, h)) for l in range(attention.n_layers) for h in range(attention.n_heads)}
    top2 = sorted(means, key=lambda head: (-means[head], head))[:2]
    assert means[top2[1]] > 0 and [tuple(h) for h in records["attention@2"]["heads"]] == top2, (records, means)
    assert records["attention@2"]["mask"]["head_scores"] == "attention.json"
    random = records["random@2-seed0"]  # one control for both rankings: no head of either ranking's top 2
    ranked = {tuple(h) for name in ("copy@2", "attention@2") for h in records[name]["heads"]}
    assert {tuple(h) for h in random["excluded_heads"]} == ranked and len(random["heads"]) == 2
    assert not {tuple(h) for h in random["heads"]} & ranked and random["mask"]["method"] == "zero"
    tests = {(t["row"], t["against"]) for t in board["tests"]}
    assert {("copy@2", "attention@2"), ("copy-kv@25%", "attention-kv@25%"), ("attention@2", "random@2")} <= tests
    assert set(_json(out / "run.json")["settings"]["rankings"]) == {"copy", "attention"}
    for plot in ("dose", "kv_budget"):
        assert (out / "plots" / f"{plot}_rh_niah_paper_score_none.png").read_bytes()[:8] == PNG
    assert "| copy@2 vs attention@2 " in (out / "leaderboard.md").read_text()


def check_scores_agreement(result, ws):
    """docs/compare-rankings.md: the four scores of docs/scores.md compared pairwise, per query head and per KV head."""
    data = _json(ws.dir / "scores-agreement.json")
    names = ["copy", "attention", "induction", "echo"]
    assert [r["name"] for r in data["rankings"]] == names and data["top"] == 8
    assert [(p["a"], p["b"]) for p in data["pairs"]] == [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    assert data["kv"]["n_kv_heads"] == 2 and data["kv"]["source"] == f"--model {ws.models['tiny_llama']}"
    assert (ws.dir / "scores-agreement.png").read_bytes()[:8] == PNG
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 6 and rows[-1].split("|")[1:3] == [" induction ", " echo      "], rows


# --- checks of docs/report.md's commands -----------------------------------------------------------------

def _keep_report(folder: str) -> Callable:
    """A ``prepare``: keep the page the folder's own run wrote, to compare `rh report`'s rebuild with."""
    return lambda ws: shutil.copy(ws.dir / folder / "report.html", ws.dir / f"{folder}.report-before.html")


def _check_report(result, ws, folder: str, rows: list[str]):
    page = ws.dir / folder / "report.html"
    assert result.stdout.startswith(f"rh report: wrote {folder}/report.html ("), result.stdout
    assert page.stat().st_size < 3_000_000  # the demo's page stays under 3 MB (issue 29)
    text = page.read_text(encoding="utf-8")
    assert re.findall(r'<tr data-row="([^"]+)">', text)[:len(rows)] == rows, text[:2000]
    assert text.count('<img src="data:image/png;base64,') == len(list((ws.dir / folder / "plots").glob("*.png")))
    assert text == (ws.dir / f"{folder}.report-before.html").read_text(encoding="utf-8")  # the page the run wrote


def check_report_demo(result, ws):
    _check_report(result, ws, "demo-out", ["full", "retrieval@1", "random@1"])


def check_report_compare(result, ws):
    _check_report(result, ws, "out", ["full", "retrieval@2", "random@2"])


# --- the table: every README command and how it is run -------------------------------------------------------

COMMANDS: dict[str, Run | CheckedBy | ParseOnly] = {
    # README: Two commands
    "make demo": CheckedBy("tests/test_demo.py::test_end_to_end_tiny_llama",
                           "its recipe is `rh demo --output-dir demo-out` (checked in the Makefile), run below on the "
                           "tiny model; the full SmolLM2 demo takes 4.3 min"),
    "make test": CheckedBy("tests/", "its recipe is `pytest -q` over testpaths tests/ (checked in the Makefile and "
                           "pyproject.toml): the suite this file belongs to"),
    # docs/model-families.md
    "rh demo --output-dir demo-out": Run("demo", (TINY, *DEMO_GRID, TIE), check_demo),
    "rh demo --model gemma3-270m --output-dir g3": Run(
        "demo_gemma3", (TINY_GEMMA3, *DEMO_GRID, Sub("GRID", "--cot-task", ""), Sub("GRID", "--direct-task", ""), TIE),
        check_demo_gemma3),
    "rh compare --model gemma3-270m --head-scores g3/head_scores.json --tasks rh_niah_paper --k 2 --seeds 3 "
    "--output-dir g3cmp --batch-size 12 --metadata '{\"lengths\": [500, 1000], \"depths\": [0, 50, 100], "
    "\"samples\": 2, \"seed\": 1}'": Run(
        "compare_gemma3", (TINY_GEMMA3, Sub("GRID", "--metadata", '{{"lengths": [200], "depths": [0, 100], '
                                                                   '"samples": 1, "seed": 1}}'), TIE),
        check_compare_gemma3, needs=("demo_gemma3",)),
    "rh heads summary demo-out/head_scores.json g3/head_scores.json --results demo-out g3cmp": Run(
        "summary_universal", (), check_summary_universal, needs=("demo", "demo_gemma3", "compare_gemma3")),
    # README: Using it from lm-eval
    "lm_eval --model rh-hf --model_args pretrained=smollm2-135m,head_scores=scores.json,mask_heads=top:6,"
    "mask_method=uniform --tasks rh_niah --metadata '{\"lengths\":[1000,2000],\"depths\":[0,50,100]}'": Run(
        "lm_eval_top", (TINY_ARG, NIAH_GRID, _out("top6"), TIE_ARG), check_lm_top, needs=("detect",)),
    "lm_eval --model rh-hf --model_args pretrained=meta-llama/Llama-3.1-8B-Instruct,mask_heads=\"16-1;20-14\" "
    "--tasks rh_gsm8k_cot --apply_chat_template": ParseOnly("a gated hub model (meta-llama)"),
    "lm_eval --model rh-hf --model_args pretrained=smollm2-135m,head_scores=scores.json,mask_heads=random:6,"
    "mask_seed=2,random_match=layer --tasks rh_cot": Run(
        "lm_eval_random", (TINY_ARG, Sub("GRID", "--limit", "1"), _out("random6"), TIE_ARG), check_lm_random,
        needs=("detect",)),
    # after `rh compare ... --output-dir out`, so that out/ is that comparison's folder, with this score file added
    "lm_eval --model rh-hf --model_args pretrained=smollm2-135m,head_scores=scores.json,kv_full_heads=top:10%,"
    "kv_window=64 --tasks rh_niah": Run("lm_eval_kv", (TINY_ARG, NIAH_GRID, _out("kv10"), TIE_ARG), check_lm_kv,
                                        needs=("detect",)),
    # docs/kv-budgets.md
    "rh demo --output-dir demo-kv --kv-budgets 10%,25%,50% --seeds 2 --tie-break random": Run(
        "demo_kv", (TINY, *DEMO_GRID, Sub("GRID", "--kv-budgets", "25%")), check_demo_kv),
    "rh compare --model gemma3-270m --tasks rh_niah_paper,rh_factsum_cot,rh_factsum --detect-lengths 500,1000 "
    "--detect-depths 0,50,100 --kv-budgets 3%,10% --seeds 2 --output-dir g3kv --batch-size 48 --limit 48 "
    "--prefix-reuse --metadata '{\"lengths\": [500, 1000], \"depths\": [0, 50, 100], \"samples\": 2, \"seed\": 1}'": Run(
        "compare_kv_gemma3", (TINY_GEMMA3, Sub("GRID", "--tasks", "rh_niah_paper"), Sub("GRID", "--detect-lengths", "200"),
                              Sub("GRID", "--detect-depths", "0,100"),
                              Sub("GRID", "--detect-samples", "1"), Sub("GRID", "--kv-budgets", "25%"),
                              Sub("GRID", "--seeds", "1"),
                              Sub("GRID", "--metadata", '{{"lengths": [200], "depths": [0, 100], "samples": 1, "seed": 1}}'),
                              TIE),
        check_compare_kv_gemma3),
    # docs/ablation-methods.md
    "rh means --model smollm2-135m --output methods-means.json --apply-chat-template": Run(
        "means_chat", (TINY, Sub("GRID", "--lengths", "150,250")), check_means_chat),
    "rh compare --model smollm2-135m --tasks rh_niah_paper,rh_factsum_cot,rh_factsum --detect-lengths 500,1000 "
    "--detect-depths 0,50,100 --methods zero,uniform,mean --head-means methods-means.json --k 8 --seeds 3 "
    "--output-dir methods --batch-size 48 --limit 48 --prefix-reuse --apply-chat-template --metadata "
    "'{\"lengths\": [500, 1000], \"depths\": [0, 50, 100], \"samples\": 2, \"seed\": 1}'": Run(
        "compare_methods", (TINY, Sub("GRID", "--tasks", "rh_niah_paper"), Sub("GRID", "--detect-lengths", "200"),
                            Sub("GRID", "--detect-depths", "0,100"), Sub("GRID", "--detect-samples", "1"),
                            Sub("K", "--k", "2"), Sub("GRID", "--seeds", "1"),
                            Sub("GRID", "--metadata", '{{"lengths": [200], "depths": [0, 100], "samples": 1, "seed": 1}}'),
                            TIE),
        check_compare_methods, needs=("means_chat",)),
    "lm_eval --model rh-hf --model_args pretrained=smollm2-135m,head_scores=methods/head_scores.json,mask_heads=top:8,"
    "mask_method=mean,head_means=methods-means.json --tasks rh_niah": Run(
        "lm_eval_mean", (TINY_ARG, Sub("K", "mask_heads", "top:2"), NIAH_GRID, _out("mean8"), TIE_ARG), check_lm_mean,
        needs=("compare_methods",)),
    "lm_eval --model rh-hf --model_args pretrained=smollm2-135m,record_scores=out/scores.json --tasks rh_niah": Run(
        "lm_eval_record", (TINY_ARG, NIAH_GRID), check_lm_record, needs=("compare",)),
    "lm_eval --model hf --model_args pretrained=$(rh models path smollm2-135m) --tasks rh_niah": Run(
        "lm_eval_stock_hf", (Sub("GRID", "--metadata", '{{"lengths": [200], "depths": [50], "samples": 1}}'),
                             _out("hf")), check_lm_stock_hf),
    "accelerate launch --multi_gpu --num_processes 2 -m lm_eval --model rh-hf --model_args "
    "pretrained=smollm2-135m,record_scores=out/scores.json --tasks rh_niah": CheckedBy(
        "tests/test_recording.py::test_multiprocess_recording_gathers_on_rank_zero",
        "the same launch on 2 CPU processes (ACCELERATE_USE_CPU=true, as the README's comment says) on the tiny "
        "model; `--multi_gpu` itself needs GPUs"),
    # docs/vllm.md
    "lm_eval --model rh-vllm --model_args pretrained=meta-llama/Llama-3.1-70B-Instruct,head_scores=llama70b.json,"
    "mask_heads=top:20,tensor_parallel_size=4 --tasks rh_gsm8k_cot --apply_chat_template": ParseOnly(
        "vLLM, 4 GPUs (tensor_parallel_size=4) and a gated hub model"),
    "lm_eval --model rh-vllm --model_args pretrained=Qwen/Qwen2.5-7B-Instruct,head_scores=qwen7b.json,"
    "mask_heads=random:16,mask_seed=1,data_parallel_size=8 --tasks rh_gsm8k_cot": ParseOnly(
        "vLLM, 8 GPUs (data_parallel_size=8) and a hub model"),
    "rh compare --backend vllm --model-args tensor_parallel_size=2 --model Qwen/Qwen2.5-7B-Instruct --head-scores "
    "qwen7b.json --tasks rh_gsm8k_cot --k 16 --seeds 3 --output-dir qwen7b": ParseOnly(
        "vLLM, 2 GPUs (tensor_parallel_size=2) and a hub model"),
    ".venv-vllm/bin/lm_eval --model rh-vllm --model_args pretrained=smollm2-135m,head_scores=scores.json,"
    "mask_heads=top:8,dtype=float32,gpu_memory_utilization=0.3 --tasks rh_niah --metadata "
    "'{\"lengths\":[500,1000],\"depths\":[0,25,50,75,100],\"samples\":1}'": ParseOnly(
        "vLLM's own venv (`make setup-vllm`); rh-vllm through this CLI is run by tests/test_vllm.py "
        "under `make test-vllm`"),
    # README and docs/commands.md, detect.md, compare.md, heads.md, demo.md: the `rh` command
    "rh models": Run("models", (), check_models, smollm=False),
    "rh detect --model smollm2-135m --output scores.json --lengths 500,1000,2000 --depths 0,25,50,75,100 "
    "--plot heads.png": Run(
        "detect", (TINY, Sub("GRID", "--lengths", "200"), Sub("GRID", "--depths", "0,100"),
                   Sub("GRID", "--samples", "1")), check_detect),
    "rh means --model smollm2-135m --output means.json": Run(
        "means", (TINY, Sub("GRID", "--lengths", "150")), check_means),
    "rh heads show scores.json": Run("heads_show", (), check_heads_show, needs=("detect",)),
    "rh heads compare a.json b.json --top 10": Run(
        "heads_compare", (), check_heads_compare, needs=("demo", "demo_gemma3"), prepare=prepare_ab),
    "rh heads summary a.json b.json --results demo-out g3": Run(
        "summary_ab", (), check_summary_ab, needs=("demo", "demo_gemma3"), prepare=prepare_ab),
    "rh compare --model smollm2-135m --head-scores scores.json --tasks rh_niah,rh_cot --k 6,12 --seeds 3 "
    "--output-dir out": Run(
        "compare", (TINY, Sub("K", "--k", "2"), Sub("GRID", "--seeds", "1"), Sub("GRID", "--limit", "2"), NIAH_GRID,
                    TIE),
        check_compare, needs=("detect",)),
    "rh check --results out/leaderboard.json --baseline ci/baseline.json --tolerance 0.02": Run(
        "check", (), check_check, needs=("compare",), prepare=prepare_baseline),
    "rh plot niah out/conditions/full --out heatmap.png": Run("plot", (), check_plot, needs=("compare",)),
    "rh demo": Run("demo_again", (TINY, *DEMO_GRID, TIE), check_demo_again, needs=("demo",)),
    "rh bench": CheckedBy("tests/test_bench.py::test_bench_end_to_end_on_a_tiny_model",
                          "both tables, each contender's memory measured in a fresh process: 76 s for one length "
                          "and one repeat of the overhead table alone, on the tiny model"),
    # docs/performance.md
    "python benchmarks/overhead.py --lengths 1000,2000,4000,8000 --new-tokens 32 --repeats 5": CheckedBy(
        "tests/test_bench.py::test_bench_end_to_end_on_a_tiny_model",
        "the script is `rh bench` (its --help run here says so); the same tables on the tiny model"),
    "rh bench --lengths \"\" --detect-lengths 1000,2000 --detect-repeats 2": CheckedBy(
        "tests/test_bench.py::test_bench_reuse_table_alone_and_nothing_to_measure",
        "the same `rh bench --lengths ''` reuse table alone, on the tiny model"),
    # the peers (nnsight, TransformerLens) live in their own venv; the benchmark takes many minutes of SmolLM2 there
    "make bench-peers": CheckedBy(
        "tests/test_peers.py::test_bench_peers_recipe_is_the_readme_command",
        "its recipe builds .venv-peers (make setup-peers) and runs the README's benchmarks/peers.py line"),
    ".venv-peers/bin/python benchmarks/peers.py --threads 1 --output "
    "benchmarks/results/peers-smollm2-135m_cpu-2core.json": CheckedBy(
        "tests/test_peers.py::test_every_masking_contender_equals_the_zeroed_weights_reference",
        "its contenders against an explicit reference on a tiny llama, in .venv-peers (skipped elsewhere)"),
    # docs/ci.md: the one-time setup of a CI gate (its rh check after the README's, which made ci/baseline.json)
    "rh detect --model smollm2-135m --output ci/head_scores.json --lengths 500,1000 --depths 0,50,100": Run(
        "ci_detect", (TINY, Sub("GRID", "--lengths", "200"), Sub("GRID", "--depths", "0,100"),
                      Sub("GRID", "--samples", "1")), check_ci_detect),
    "rh compare --model smollm2-135m --head-scores ci/head_scores.json --tasks rh_niah,rh_vartrack,rh_vartrack_cot "
    "--k 6 --seeds 2 --limit 8 --output-dir rh-out": Run(
        "ci_compare", (TINY, Sub("GRID", "--tasks", "rh_niah,rh_vartrack"), Sub("K", "--k", "2"),
                       Sub("GRID", "--seeds", "1"), Sub("GRID", "--limit", "2"), NIAH_GRID, TIE),
        check_ci_compare, needs=("ci_detect",)),
    "rh check --update-baseline --results rh-out/leaderboard.json --baseline ci/baseline.json": Run(
        "ci_baseline", (), check_ci_baseline, needs=("ci_compare", "check")),
    # docs/cot.md
    "lm_eval --model hf --model_args pretrained=$(rh models path smollm2-135m) --tasks rh_cot --batch_size 8": CheckedBy(
        "tests/test_cot.py::test_stock_cli_runs_the_suite_end_to_end",
        "the whole suite through the stock CLI on the tiny model (--limit 2); SmolLM2's 600 generations take ~10 min"),
    "lm_eval --model hf --model_args pretrained=$(rh models path smollm2-135m) --tasks rh_factsum_cot,rh_factsum "
    "--metadata '{\"cot_docs\": 50, \"cot_seed\": 7}' --apply_chat_template": Run(
        "lm_eval_factsum", (Sub("GRID", "--limit", "1"), _out("factsum")), check_lm_factsum),
    "lm_eval --model hf --model_args pretrained=$(rh models path smollm2-135m) --tasks rh_gsm8k_pair "
    "--metadata '{\"gsm8k_path\": \"/data/gsm8k/test.jsonl\"}'": CheckedBy(
        "tests/test_cot.py::test_gsm8k_from_local_jsonl_matches_lm_eval_config",
        "GSM8K at the user's path: the same tasks from ../shared/data/gsm8k/test.jsonl, checked against lm-eval's "
        "configs, prompts and scoring"),
    # docs/niah.md
    "lm_eval --model hf --model_args pretrained=$(rh models path smollm2-135m) --tasks rh_niah --metadata "
    "'{\"lengths\":[1000,2000,4000],\"depths\":[0,25,50,75,100],\"needles\":\"paper\",\"haystack\":\"pg_essays\"}' "
    "--apply_chat_template --log_samples --output_path niah-out": Run(
        "lm_eval_niah_doc", (Sub("GRID", "--metadata", '{{"lengths":[200],"depths":[0,100],"needles":"paper",'
                                                      '"haystack":"pg_essays","samples":1}}'),), check_niah_doc),
    "rh plot niah niah-out --out niah.png": Run("niah_plot", (), check_niah_plot, needs=("lm_eval_niah_doc",)),
    "lm_eval --model hf --model_args pretrained=$(rh models path smollm2-135m) --tasks rh_niah_variants --metadata "
    "'{\"lengths\":[1000,2000]}'": Run(
        "lm_eval_variants", (Sub("GRID", "--metadata", '{{"lengths":[200]}}'), Sub("GRID", "--limit", "1"),
                             _out("variants")), check_niah_variants),
    # docs/rankings.md: rh heads import / rh heads compare
    f"rh heads import duo {DUO_MISTRAL} --layers 32 --heads 32 --kv-heads 8 --output duo-mistral.json": Run(
        "import_duo_mistral", (), check_import_duo_mistral, prepare=prepare_duo_mistral, smollm=False),
    "rh heads import duo full_attention_heads.tsv --model smollm2-135m --output duo.json": Run(
        "import_duo", (TINY,), check_import_duo, prepare=prepare_duo_tiny),
    "rh heads import csv heads.csv --model smollm2-135m --output mine.json": Run(
        "import_csv", (TINY,), check_import_csv, prepare=prepare_heads_csv),
    "rh heads compare copy=scores.json duo=duo.json mine=mine.json --top 10 --model smollm2-135m --output "
    "agreement.json --plot agreement.png": Run(
        "heads_compare_n", (TINY,), check_heads_compare_n, needs=("detect", "import_duo", "import_csv")),
    # docs/compare-rankings.md
    "rh heads compare copy=copy.json attention=attention.json induction=induction.json echo=echo.json --top 8 "
    "--model smollm2-135m --output scores-agreement.json --plot scores-agreement.png": Run(
        "scores_agreement", (TINY,), check_scores_agreement,
        needs=("detect_copy", "detect_attention", "detect_induction", "detect_echo")),
    "rh compare --model smollm2-135m --rankings copy=copy.json,attention=attention.json,induction=induction.json,"
    "echo=echo.json --tasks rh_niah_paper,rh_factsum_cot,rh_factsum --k 8 --kv-budgets 10%,25%,50% --seeds 2 "
    "--tie-break random --output-dir rankings --batch-size 48 --limit 48 --prefix-reuse --apply-chat-template "
    "--metadata '{\"lengths\": [500, 1000], \"depths\": [0, 50, 100], \"samples\": 2, \"seed\": 1}'": Run(
        "compare_rankings", (TINY, Sub("GRID", "--rankings", "copy=copy.json,attention=attention.json"),
                             Sub("GRID", "--tasks", "rh_niah_paper"), Sub("K", "--k", "2"),
                             Sub("GRID", "--kv-budgets", "25%"), Sub("GRID", "--seeds", "1"),
                             Sub("GRID", "--metadata", '{{"lengths": [200], "depths": [0, 100], "samples": 1, "seed": 1}}')),
        check_compare_rankings, needs=("detect_copy", "detect_attention")),
    # docs/report.md: rebuild the page rh demo / rh compare wrote (byte for byte) from their folders
    "rh report demo-out": Run("report_demo", (), check_report_demo, needs=("demo",), prepare=_keep_report("demo-out")),
    "rh report out": Run("report_compare", (), check_report_compare, needs=("compare",), prepare=_keep_report("out")),
    # docs/scores.md: rh detect --score (issue 28, part 1) and its cost in rh bench (part 5)
    "rh detect --model smollm2-135m --score copy --output copy.json --lengths 500,1000 --depths 0,50,100": Run(
        "detect_copy", (TINY, *SCORE_GRID), lambda result, ws: check_score(result, ws, "copy", tests=2)),
    "rh detect --model smollm2-135m --score attention --output attention.json --lengths 500,1000 --depths 0,50,100":
        Run("detect_attention", (TINY, *SCORE_GRID), lambda result, ws: check_score(result, ws, "attention", tests=2)),
    "rh detect --model smollm2-135m --score induction --output induction.json --lengths 500,1000": Run(
        "detect_induction", (TINY, *REPEAT_GRID), lambda result, ws: check_score(result, ws, "induction", tests=2)),
    "rh detect --model smollm2-135m --score echo --output echo.json --lengths 500,1000": Run(
        "detect_echo", (TINY, *REPEAT_GRID), lambda result, ws: check_score(result, ws, "echo", tests=2)),
    'rh bench --contenders hf,none,record,attention,induction,echo --lengths 1000,2000 --repeats 5 --detect-lengths "" '
    '--output benchmarks/results/smollm2-135m_cpu-2core_scores.json':
        CheckedBy("tests/test_bench.py::test_each_mass_score_contender_reads_the_bench_prompt_and_changes_no_token",
                  "each score's contender on the tiny model's bench prompt (the timing loop and its memory probes are "
                  "test_bench_end_to_end_on_a_tiny_model's)"),
}
RUNS = {entry.name: (command, entry) for command, entry in COMMANDS.items() if isinstance(entry, Run)}
PARSE_ONLY = [command for command, entry in COMMANDS.items() if isinstance(entry, ParseOnly)]


def describe_table() -> str:
    return "\n".join(f"{command}\n    -> {entry.how()}" for command, entry in COMMANDS.items())


# --- the table against the README ----------------------------------------------------------------------------

def test_readme_parser_joins_continuations_and_drops_comments():
    text = ("```sh\n# a comment line\nrh demo --k 2   # trailing\nlm_eval --model_args a=1,b=\"x;y\" \\\n"
            "  --metadata '{\"n\": \"#1\"}'\n```\n```\nrh not-sh\n```\n")
    assert readme_commands(text) == ["rh demo --k 2", "lm_eval --model_args a=1,b=\"x;y\" --metadata '{\"n\": \"#1\"}'"]


def documented_commands() -> dict[str, list[str]]:
    """{command: the pages that show it}, over the README and every page of docs/."""
    found: dict[str, list[str]] = {}
    for page in PAGES():
        commands = readme_commands(page.read_text(encoding="utf-8"))
        name = str(page.relative_to(ROOT))
        assert len(commands) == len(set(commands)), f"a command appears twice in {name}: one entry would cover both"
        for command in commands:
            found.setdefault(command, []).append(name)
    return found


def test_every_readme_command_has_an_entry():
    commands = documented_commands()
    missing = [f"{c}   ({', '.join(pages)})" for c, pages in commands.items() if c not in COMMANDS]
    stale = [c for c in COMMANDS if c not in commands]
    assert not missing, "documented commands no test runs (add them to COMMANDS):\n" + "\n".join(missing)
    assert not stale, "COMMANDS entries no longer in the README or docs/:\n" + "\n".join(stale)
    assert len(RUNS) == sum(isinstance(e, Run) for e in COMMANDS.values())  # run names are unique
    for name, (_, entry) in RUNS.items():
        assert set(entry.needs) <= set(RUNS), (name, entry.needs)
    print(describe_table())


def test_checked_by_names_real_tests_and_the_make_recipes_are_what_the_table_says():
    for command, entry in COMMANDS.items():
        if isinstance(entry, CheckedBy):
            path, _, name = entry.test.partition("::")
            assert (ROOT / path).exists(), entry.test
            if name:
                assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), flags=re.M), entry.test
    makefile = (ROOT / "Makefile").read_text()
    recipe = {target: body for target, body in re.findall(r"^([\w-]+):[^\n]*\n((?:\t[^\n]*\n)+)", makefile, re.M)}
    assert "/bin/rh demo --output-dir demo-out" in recipe["demo"] and "rh demo --output-dir demo-out" in RUNS["demo"][0]
    assert recipe["test"].strip().endswith("/bin/pytest -q")
    assert 'testpaths = ["tests"]' in (ROOT / "pyproject.toml").read_text()


# --- parse level ---------------------------------------------------------------------------------------------

def _task_names() -> set[str]:
    names = set()
    for path in (ROOT / "task_configs").glob("*.yaml"):
        names |= set(re.findall(r"^(?:task|group): (\w+)$", path.read_text(), flags=re.M))
    return names


def _lm_eval_args(argv: list[str], monkeypatch):
    from lm_eval._cli import HarnessCLI

    monkeypatch.setattr(sys, "argv", ["lm_eval", *argv])
    return HarnessCLI().parse_args()


def _check_model_args(model: str, model_args: dict):
    """Our mask args through our parser; every other key one the model class names (or a vLLM engine arg)."""
    from rh_models.lm import RHHFLM
    from rh_models.mask_args import parse_mask_args

    mask_keys = set(inspect.signature(parse_mask_args).parameters)
    parse_mask_args(**{k: v for k, v in model_args.items() if k in mask_keys})
    rest = set(model_args) - mask_keys
    if model in ("rh-hf", "hf"):
        from lm_eval.models.huggingface import HFLM

        known = set(inspect.signature(HFLM.__init__).parameters)
        if model == "rh-hf":
            known |= set(inspect.signature(RHHFLM.__init__).parameters)
        else:
            assert not model_args.keys() & mask_keys, f"stock hf takes no rh-eval arguments: {model_args}"
    else:
        assert model == "rh-vllm", model
        import lm_eval

        # lm-eval's VLLM cannot be imported without vLLM: read the names of its __init__ from its source
        tree = ast.parse((Path(lm_eval.__file__).parent / "models" / "vllm_causallms.py").read_text())
        [init] = [node for cls in ast.walk(tree) if isinstance(cls, ast.ClassDef) and cls.name == "VLLM"
                  for node in cls.body if isinstance(node, ast.FunctionDef) and node.name == "__init__"]
        known = {arg.arg for arg in init.args.args + init.args.kwonlyargs} | {"gpu_memory_utilization"}
    assert rest <= known, f"{model} does not take {sorted(rest - known)}"


def _check_lm_eval(argv: list[str], monkeypatch):
    args = _lm_eval_args(argv, monkeypatch)
    assert args.command == "run" and args.model in ("rh-hf", "rh-vllm", "hf")
    assert set(args.tasks) <= _task_names(), args.tasks
    _check_model_args(args.model, args.model_args)
    return args


def _check_parses(command: str, monkeypatch):
    # a ``$(...)`` is a value the shell fills in (a folder, for ``rh models path``): any one word parses the same
    argv = shlex.split(re.sub(r"\$\(([^)]*)\)", "/substituted/by/the/shell", command))
    program = Path(argv[0]).name
    if program == "lm_eval":
        _check_lm_eval(argv[1:], monkeypatch)
    elif program == "accelerate":
        from accelerate.commands.launch import launch_command_parser

        launch = launch_command_parser().parse_args(argv[2:])
        assert launch.multi_gpu and launch.num_processes == 2 and launch.module and launch.training_script == "lm_eval"
        _check_lm_eval(launch.training_script_args, monkeypatch)
    elif program == "python" and argv[1] == "benchmarks/peers.py":
        import importlib.util

        spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "benchmarks" / "peers.py")
        peers = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(peers)  # imports no peer: they are loaded by the contenders that use them
        args = peers.build_parser().parse_args(argv[2:])
        assert args.threads == 1 and args.output.name.startswith("peers-")
    elif program in ("rh", "python"):
        from rh_eval.cli import build_parser

        rh_argv = argv[1:] if program == "rh" else ["bench", *argv[2:]]
        args = build_parser(rh_argv[0]).parse_args(rh_argv)
        if args.command == "compare":
            from rh_eval.compare import config_from_args

            config = config_from_args(args)
            assert config.backend == "vllm" and config.model_args == {"tensor_parallel_size": 2}
    else:
        assert program == "make", command


NOT_RUN = [command for command, entry in COMMANDS.items() if not isinstance(entry, Run)]


@pytest.mark.parametrize("command", NOT_RUN, ids=[re.sub(r"\W+", "-", c)[:60].strip("-") for c in NOT_RUN])
def test_commands_not_run_here_parse(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # score files the commands name; every head of them scored, since the rankings the commands ask for (top:20,
    # --k 16, ...) are checked on the file before any model loads
    for name in ("scores.json", "llama70b.json", "qwen7b.json"):
        (tmp_path / name).write_text(json.dumps({f"{l}-{h}": [0.5] for l in range(8) for h in range(8)}))
    _check_parses(command, monkeypatch)


def test_parse_only_commands_are_the_gpu_vllm_and_hub_ones():
    assert PARSE_ONLY == [c for c in COMMANDS if "rh-vllm" in c or "--backend vllm" in c or "meta-llama/" in c]


@pytest.mark.slow
def test_the_benchmark_script_is_rh_bench():
    result = run_cli("python", str(ROOT / "benchmarks" / "overhead.py"), "--help", cwd=ROOT)
    assert result.returncode == 0 and result.stdout.startswith("usage: rh bench"), result.stdout + result.stderr


# --- rh plot on rh compare / rh demo folders (issue 18 item 2: failed on every such folder) -------------------

def test_rh_plot_reads_the_condition_folders_rh_compare_writes(tmp_path, capsys):
    from rh_eval.cli import main
    from rh_eval.run_files import samples_name

    def sample(length, depth, score):
        return json.dumps({"doc": {"length": length, "depth": depth}, "score": score})

    for condition, score in (("full", 1.0), ("retrieval@2", 0.0)):
        folder = tmp_path / "out" / "conditions" / condition
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"results": {"rh_niah_paper": {"score,none": score}}}))
        lines = [sample(200, 0, score), sample(200, 100, score), sample(300, 0, 0.5)]
        (folder / samples_name("rh_niah_paper")).write_text("\n".join(lines) + "\n")
    out = tmp_path / "heatmap.png"
    assert main(["plot", "niah", str(tmp_path / "out" / "conditions" / "full"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG
    assert capsys.readouterr().out == f"{out}: 3 cells, mean score 0.833\n"
    # the whole comparison holds one samples file per condition: which one is the user's choice, never ours
    assert main(["plot", "niah", str(tmp_path / "out"), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "2 samples files of rh_niah_paper" in error and "conditions/retrieval@2" in error


# --- running the README's commands ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_gemma3_dir(tmp_path_factory, smollm_dir) -> Path:
    """A tiny random Gemma-3 (one sliding-window, one global layer; 4 query heads, 1 KV head), SmolLM2's tokenizer."""
    import torch
    import transformers

    path = tmp_path_factory.mktemp("tiny-gemma3")
    config = transformers.Gemma3TextConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        head_dim=16, sliding_window=64, layer_types=["sliding_attention", "full_attention"], vocab_size=49152,
        max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    transformers.AutoTokenizer.from_pretrained(smollm_dir).save_pretrained(path)
    return path


class Workspace:
    """One tmp folder, the README's working directory, where each selected command runs once, after its needs.

    Commands that share files (one command's ``needs``, transitively) form a group; the groups run in two lanes,
    one thread each, so that a 2-core machine runs two commands at a time (every command is one process with one
    thread). A command never waits on the other lane: nothing it reads is written there.
    """

    FIXTURES = {"tiny_llama": "tiny_llama_dir", "tiny_gemma3": "tiny_gemma3_dir"}

    def __init__(self, folder: Path, models: dict[str, str]):
        self.dir = folder
        self.models = models
        self.jobs: dict[str, Future] = {}
        self.seconds: dict[str, float] = {}
        self.lanes: list[threading.Thread] = []

    @staticmethod
    def lanes_for(names: list[str]) -> list[list[str]]:
        """``names`` and their needs, in run order, as two lanes of whole groups (the largest group first)."""
        def closure(name: str) -> list[str]:
            return [n for need in RUNS[name][1].needs for n in closure(need)] + [name]

        wanted = list(dict.fromkeys(n for name in names for n in closure(name)))
        group_of = {name: {name} for name in wanted}
        for name in wanted:
            for need in RUNS[name][1].needs:
                merged = group_of[name] | group_of[need]
                for member in merged:
                    group_of[member] = merged
        groups = sorted({id(g): g for g in group_of.values()}.values(), key=len, reverse=True)
        lanes: list[list[str]] = [[], []]
        for group in groups:
            min(lanes, key=len).extend(n for n in wanted if n in group)
        return [lane for lane in lanes if lane]

    def start(self, names: list[str]) -> None:
        lanes = self.lanes_for(names)
        for lane in lanes:
            self.jobs.update({name: Future() for name in lane})
        for lane in lanes:
            thread = threading.Thread(target=self._run_lane, args=(lane,), daemon=True)
            thread.start()
            self.lanes.append(thread)

    def _run_lane(self, lane: list[str]) -> None:
        for name in lane:
            failed = [need for need in RUNS[name][1].needs if self.jobs[need].exception()]  # same lane: done
            try:
                if failed:
                    raise AssertionError(f"not run: it needs {failed[0]}, which failed")
                self.jobs[name].set_result(self._run(name))
            except BaseException as exc:  # noqa: BLE001 - handed to the test that waits for this command
                self.jobs[name].set_exception(exc)

    def _shell_substitution(self, command: str) -> str:
        def run(match):
            inner = run_cli(*shlex.split(match[1]), cwd=self.dir, env=ENV)
            assert inner.returncode == 0, inner.stderr[-2000:]
            return inner.stdout.strip()

        return re.sub(r"\$\(([^)]*)\)", run, command)

    def _run(self, name: str):
        command, entry = RUNS[name]
        if entry.prepare:
            entry.prepare(self)
        argv = shlex.split(self._shell_substitution(command))
        for sub in entry.subs:
            argv = sub.apply(argv, self.models)
        start = time.perf_counter()
        result = run_cli(*argv, cwd=self.dir, env=ENV)
        self.seconds[name] = time.perf_counter() - start
        assert result.returncode == 0 and "Traceback" not in result.stderr, (
            f"{shlex.join(argv)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def result(self, name: str):
        return self.jobs[name].result()

    def join(self) -> None:
        for thread in self.lanes:
            thread.join()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, request):
    """Starts every selected README command (and what it needs) at once, in two lanes; tests wait for theirs."""
    names = [item.callspec.params["name"] for item in request.session.items
             if getattr(item, "originalname", None) == "test_readme_command" and item.module is request.module]
    subs = [sub.value for lane in Workspace.lanes_for(names) for name in lane for sub in RUNS[name][1].subs]
    models = {key: str(request.getfixturevalue(fixture)) for key, fixture in Workspace.FIXTURES.items()
              if any(f"{{{key}}}" in value for value in subs)}  # built here, in the main thread, before the lanes
    ws = Workspace(tmp_path_factory.mktemp("readme"), models)
    ws.start(names)
    yield ws
    ws.join()  # no command outlives the module


@pytest.mark.parametrize("name", [  # every one starts a program: slow; the tiny models need SmolLM2's tokenizer
    pytest.param(name, marks=[pytest.mark.slow, *([pytest.mark.smollm] if entry.smollm else [])])
    for name, (_, entry) in RUNS.items()
])
def test_readme_command(name, workspace):
    """One README command, run (after the ones it needs) in the shared folder: what it wrote and printed."""
    result = workspace.result(name)
    print(f"{name}: {workspace.seconds[name]:.1f} s: {shlex.join(result.args[1:])}")  # shown with -rA / -s
    RUNS[name][1].check(result, workspace)


# --- the pages link up ---------------------------------------------------------------------------------------

def _links(page: Path) -> list[str]:
    """Relative link targets of a page (markdown links and images, html src), without anchors."""
    text = page.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'src="([^"]+)"', text)
    return [t.split("#")[0] for t in targets if not re.match(r"^[a-z]+:", t) and t.split("#")[0]]


def test_every_link_of_the_pages_resolves_and_every_docs_page_is_reachable_from_the_readme():
    broken = [f"{page.relative_to(ROOT)} -> {target}" for page in PAGES() for target in _links(page)
              if not (page.parent / target).exists()]
    assert not broken, "links to nothing:\n" + "\n".join(broken)
    reached, todo = {README.resolve()}, [README]
    while todo:
        page = todo.pop()
        for target in _links(page):
            path = (page.parent / target).resolve()
            if path.suffix == ".md" and path not in reached:
                reached.add(path)
                todo.append(path)
    unreached = [str(p.relative_to(ROOT)) for p in PAGES() if p.resolve() not in reached]
    assert not unreached, f"docs pages no link leads to from the README: {unreached}"
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 250  # the front door stays short
