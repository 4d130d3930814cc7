"""``rh heads compare``: every pair of rankings, per query head and per KV head, as a table, JSON and a heatmap.

Synthetic score files of the tiny llama's shape (2 layers x 4 query heads, 2 KV heads: query heads 0-1 read KV
head 0, 2-3 KV head 1), through the ``rh`` entry point in-process (the parser, dispatch and one-line errors of the
real command).
"""

from __future__ import annotations

import json

import pytest

from rh_eval.cli import main
from rh_eval.heads_compare import by_kv_head
from rh_eval.plots.agreement import overlap_matrix
from rh_models.heads import HeadScores

PNG = b"\x89PNG\r\n\x1a\n"
# one ranking, the same ranking squared (same order), and one that picks the *other* query head of the same KV
# groups in the same order: it agrees with the first on every KV head and on no query head
COPY = {(0, 0): 0.9, (1, 2): 0.8, (0, 3): 0.3}
OTHER = {(0, 1): 0.9, (1, 3): 0.8, (0, 2): 0.3}


def _write(path, values: dict, n_kv: int | None = None):
    path.write_text(json.dumps({f"{l}-{h}": [values.get((l, h), 0.0)] for l in range(2) for h in range(4)}))
    if n_kv is not None:
        path.with_suffix(".meta.json").write_text(json.dumps({"protocol": "rh detect", "n_kv_heads": n_kv}))
    return path


def _rh(capsys, *args) -> tuple[int, str, str]:
    code = main(["heads", "compare", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _table(stdout: str) -> list[list[str]]:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines()
            if line.startswith("|") and "---" not in line]
    return rows


@pytest.fixture
def three(tmp_path):
    return (_write(tmp_path / "copy.json", COPY), _write(tmp_path / "sq.json", {h: v * v for h, v in COPY.items()}),
            _write(tmp_path / "other.json", OTHER))


def test_three_rankings_agree_on_kv_groups_and_disagree_on_heads(three, tmp_path, capsys):
    copy, squared, other = three
    code, out, err = _rh(capsys, f"copy={copy}", f"squared={squared}", f"other={other}", "--top", 3,
                         "--kv-heads", 2, "--output", tmp_path / "agreement.json", "--plot", tmp_path / "agreement.png")
    assert code == 0, err
    result = json.loads((tmp_path / "agreement.json").read_text())
    assert result["kv"] == {"n_kv_heads": 2, "group": 2, "source": "--kv-heads", "top": 2,
                            "aggregate": "highest of the group's query heads"}
    pairs = {(p["a"], p["b"]): p for p in result["pairs"]}
    assert list(pairs) == [("copy", "squared"), ("copy", "other"), ("squared", "other")]
    same = pairs[("copy", "squared")]
    assert (same["query"]["overlap"], same["query"]["jaccard"], same["query"]["kendall_tau"]) == (3, 1.0, 1.0)
    crossed = pairs[("copy", "other")]
    assert (crossed["query"]["overlap"], crossed["query"]["jaccard"]) == (0, 0.0)
    assert crossed["query"]["kendall_tau"] < 0.5  # the heads' order differs ...
    kv = crossed["kv"]
    assert (kv["overlap"], kv["jaccard"], kv["kendall_tau"]) == (2, 1.0, 1.0)  # ... the groups' does not
    assert crossed["kv"]["shared"] == "0-0;1-1"  # layer-KV head: (0.9 + 0) / 2 and (0.8 + 0) / 2 in both
    header, *rows = _table(out)
    assert header == ["a", "b", "top-3 overlap", "Jaccard", "Kendall tau", "KV top-2 overlap", "KV Jaccard",
                      "KV Kendall tau"]
    assert rows[1][:4] == ["copy", "other", "0/3", "0.00"] and rows[1][5:7] == ["2/2", "1.00"]
    assert "per KV head: 2 KV heads per layer (from --kv-heads), each scored by the highest of its 2 query heads" in out
    assert not out.startswith("top-3 overlap")  # the two-file lines are for two files
    assert (tmp_path / "agreement.png").read_bytes()[:8] == PNG
    assert overlap_matrix(result, "query") == [[3, 3, 0], [3, 3, 0], [0, 0, 3]]
    assert overlap_matrix(result, "kv") == [[2, 2, 2], [2, 2, 2], [2, 2, 2]]


def test_a_kv_head_scores_the_highest_of_its_query_heads():
    # a KV budget keeps KV head (0, 0) as soon as 0-1 (0.6) is chosen: that is its rank, not the group's mean 0.45
    scores = HeadScores({(0, 0): [0.2, 0.4], (0, 1): [0.6], (1, 3): [0.5]}, 2, 4)
    kv = by_kv_head(scores, 2)
    assert (kv.n_layers, kv.n_heads) == (2, 2)
    assert [kv.mean(h) for h in [(0, 0), (0, 1), (1, 0), (1, 1)]] == pytest.approx([0.6, 0.0, 0.0, 0.5])


def test_the_two_file_form_keeps_its_lines_and_says_when_scores_stop(tmp_path, capsys):
    a, b = _write(tmp_path / "a.json", COPY), _write(tmp_path / "b.json", {(0, 0): 0.5})
    code, out, _ = _rh(capsys, a, b, "--top", 2)
    first, second, *rest = out.splitlines()
    assert first == f"top-2 overlap: 1/2 (Jaccard 0.50); shared: 0-0 (heads above 0 among them: {a} 2, {b} 1)"
    assert second.startswith("Kendall tau over all heads: 0.") and "(p = " in second
    assert any(line.startswith("per KV head: not computed (no KV-head count") for line in rest)
    assert _table(out)[0] == ["a", "b", "top-2 overlap", "Jaccard", "Kendall tau"]  # no KV columns without a count
    zero_a, zero_b = _write(tmp_path / "z1.json", {}), _write(tmp_path / "z2.json", {})
    code, out, _ = _rh(capsys, zero_a, zero_b)  # files that rank nothing agree on nothing
    assert code == 0 and out.splitlines()[:2] == [
        f"top-10 overlap: 0/10 (Jaccard n/a); shared: none (heads above 0 among them: {zero_a} 0, {zero_b} 0)",
        "Kendall tau over all heads: n/a (a file scores every head the same)"]


def test_the_kv_head_count_comes_from_model_or_provenance_and_says_which(tmp_path, tiny_config_dirs, capsys):
    a, b = _write(tmp_path / "a.json", COPY, n_kv=2), _write(tmp_path / "b.json", OTHER, n_kv=2)
    code, out, _ = _rh(capsys, a, b, "--top", 3, "--output", tmp_path / "r.json")
    assert code == 0 and f"from the provenance of {a}, {b})" in out
    assert json.loads((tmp_path / "r.json").read_text())["pairs"][0]["kv"]["overlap"] == 2
    code, out, _ = _rh(capsys, _write(tmp_path / "c.json", COPY), _write(tmp_path / "d.json", OTHER), "--top", 3,
                       "--model", tiny_config_dirs["gemma3"], "--output", tmp_path / "g.json")
    kv = json.loads((tmp_path / "g.json").read_text())["kv"]
    assert code == 0 and (kv["n_kv_heads"], kv["group"], kv["top"]) == (1, 4, 1)  # MQA: one KV head per layer
    assert kv["source"] == f"--model {tiny_config_dirs['gemma3']}"
    _write(tmp_path / "e.json", OTHER, n_kv=1)  # rankings of two models of one shape: not grouped unless told
    code, out, _ = _rh(capsys, a, tmp_path / "e.json")
    assert code == 0 and "per KV head: not computed (the score files' provenance disagrees" in out


@pytest.mark.parametrize("args, message", [
    (("{a}",), "needs at least two score files"),
    (("{a}", "{b}", "--kv-heads", "1"), "was made for a model with 2 KV heads per layer (its provenance), but "
                                        "--kv-heads says 1"),
    (("{a}", "{b}", "--kv-heads", "3"), "4 query heads do not split into 3 KV heads (--kv-heads)"),
    (("{a}", "{b}", "--model", "{phi3}", "--kv-heads", "2"), "give --model or --kv-heads, not both"),
    (("{a}", "{b}", "--top", "0"), "--top must be at least 1"),
    (("{a}", "{b}", "--top-kv", "0"), "--top-kv must be at least 1"),
    (("x={a}", "x={b}"), "rh heads compare names a ranking twice: x"),
    (("{a}", "{wide}"), "score files are for different shapes"),
    (("{a}", "{b}", "--model", "{wide_model}"), "but {wide_model} has 2 x 8"),
    (("{a}", "{tmp}/missing.json"), "missing.json does not exist"),
])
def test_bad_comparisons_are_one_line(args, message, tmp_path, tiny_config_dirs, capsys):
    import transformers

    wide_model = tmp_path / "wide-model"
    transformers.LlamaConfig(num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                             hidden_size=64).save_pretrained(wide_model)
    paths = {"a": _write(tmp_path / "a.json", COPY, n_kv=2), "b": _write(tmp_path / "b.json", OTHER),
             "wide": tmp_path / "wide.json", "tmp": tmp_path, "wide_model": wide_model, **tiny_config_dirs}
    paths["wide"].write_text(json.dumps({"0-0": [1.0], "0-7": [0.5], "1-0": [0.1]}))
    code, _, err = _rh(capsys, *[arg.format(**paths) for arg in args])
    assert code == 2 and len(err.strip().splitlines()) == 1 and message.format(**paths) in err, err


def test_a_tie_at_the_cut_is_said_not_hidden(tmp_path, capsys):
    """Saturated gates (many of DuoAttention's are exactly 1.0): (layer, head) order picks the tied heads kept."""
    gates = _write(tmp_path / "gates.json", {(0, 0): 1.0, (0, 1): 1.0, (1, 2): 1.0, (1, 3): 0.5}, n_kv=2)
    code, out, _ = _rh(capsys, gates, _write(tmp_path / "a.json", COPY), "--top", 2, "--output", tmp_path / "r.json")
    ranking = json.loads((tmp_path / "r.json").read_text())["rankings"][0]
    assert code == 0 and ranking["tie_at_cut"] == {"score": 1.0, "tied": 3, "inside": 2}
    # KV heads (0,0) and (1,1) both reach 1.0 (their highest query heads): the KV top-1 is a tie too
    assert ranking["kv_tie_at_cut"] == {"score": 1.0, "tied": 2, "inside": 1}
    assert f"tie: 3 heads of {gates} share the top-2 cut's score 1; its top-2 takes the first 2 of them" in out
    assert json.loads((tmp_path / "r.json").read_text())["rankings"][1]["tie_at_cut"] is None
