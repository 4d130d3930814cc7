"""``rh heads import``: DuoAttention pattern files and layer,head,score tables -> score files, through the CLI.

The shapes are the tiny models' (conftest's configs, saved without weights): llama (4 query heads, 2 KV heads),
gemma3 (4 query heads, 1 KV head, a sliding-window layer) and phi3 (4 and 4, no GQA). In-process calls of the
``rh`` entry point (the parser, the dispatch and the one-line error of the real command); the docs page's
commands run as subprocesses in test_readme_commands.
"""

from __future__ import annotations

import json
import random

import pytest
from rh_eval.cli import main
from rh_models.heads import HeadScores, select_heads
from rh_models.shape import HeadShape, config_sha256


def _rh(capsys, *args) -> tuple[int, str, str]:
    code = main(["heads", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _gates(n_layers: int, n_kv: int, seed: int = 0) -> list[list[float]]:
    rng = random.Random(seed)
    return [[round(rng.uniform(-1e-4, 1.0), 6) for _ in range(n_kv)] for _ in range(n_layers)]


def _write_duo(path, gates) -> None:
    path.write_text("".join("\t".join(f"{g:.18e}" for g in row) + "\n" for row in gates))  # numpy.savetxt's layout


@pytest.mark.parametrize("arch", ["llama", "gemma3", "phi3"])
def test_duo_gates_go_to_every_query_head_of_their_kv_group(arch, tiny_config_dirs, tmp_path, capsys):
    import transformers

    config = transformers.AutoConfig.from_pretrained(tiny_config_dirs[arch])
    shape = HeadShape.of_config(config)
    gates = _gates(shape.n_layers, shape.n_kv_heads)
    folder = tmp_path / "attn_patterns" / "tiny"
    folder.mkdir(parents=True)
    _write_duo(folder / "full_attention_heads.tsv", gates)
    (folder / "config.json").write_text(json.dumps({"threshold": 0.5, "sink_size": 128}))
    out = tmp_path / "duo.json"
    code, stdout, err = _rh(capsys, "import", "duo", folder, "--model", tiny_config_dirs[arch], "--output", out)
    assert code == 0, err
    scores = HeadScores.load(out, shape.n_layers, shape.n_heads)
    group = shape.n_heads // shape.n_kv_heads
    for layer in range(shape.n_layers):
        for head in range(shape.n_heads):
            assert scores.per_test[(layer, head)] == [pytest.approx(gates[layer][head // group])]
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert (meta["format"], meta["per_kv_head"], meta["n_kv_heads"], meta["heads_unlisted"]) == (
        "duo", True, shape.n_kv_heads, 0)
    assert f"its {group} query heads" in meta["kv_expansion"] and f"its {group} query heads" in stdout
    assert meta["model_config_sha256"] == config_sha256(config) and meta["duo_config"]["threshold"] == 0.5
    # a ranking reads it like a detection's: top:group is one whole KV group, the one with the largest gate
    best = max((g, layer, kv) for layer, row in enumerate(gates) for kv, g in enumerate(row) if g > 0)
    chosen = select_heads(f"top:{group}", shape.n_layers, shape.n_heads, scores=scores).heads
    assert sorted(chosen) == [(best[1], best[2] * group + q) for q in range(group)]


def test_tables_with_and_without_header_and_any_delimiter(tmp_path, capsys):
    tables = {
        "header.csv": "score,layer,head\n0.9,1,2\n0.25,0,3\n",
        "plain.tsv": "1\t2\t0.9\n0\t3\t0.25\n",
        "spaces.txt": "# from another tool\n1 2 0.9\n\n0   3  0.25\n",
    }
    for name, text in tables.items():
        (tmp_path / name).write_text(text)
        out = tmp_path / f"{name}.json"
        code, stdout, err = _rh(capsys, "import", "csv", tmp_path / name, "--layers", 2, "--heads", 4,
                                "--output", out)
        assert code == 0, err
        written = json.loads(out.read_text())
        assert written == {f"{l}-{h}": {(1, 2): [0.9], (0, 3): [0.25]}.get((l, h), []) for l in range(2)
                           for h in range(4)}, name
        meta = json.loads(out.with_suffix(".meta.json").read_text())
        assert (meta["heads_listed"], meta["heads_unlisted"], meta["n_kv_heads"]) == (2, 6, None)
        assert meta["header"] == (["score", "layer", "head"] if name == "header.csv" else None)
        assert "the other 6 get no score" in stdout and "top: 1-2 (0.9), 0-3 (0.25)" in stdout
        assert HeadScores.load(out, 2, 4).scored() == [(1, 2), (0, 3)]


@pytest.mark.parametrize("kind, text, args, message", [
    ("duo", "0.1\t0.2\n0.3\t0.4\n", ("--model", "{gemma3}"), "has 2 rows x 2 columns (layers x KV heads), but the "
                                                              "model has 2 layers x 1 KV heads"),
    ("duo", "0.1\t0.2\t0.3\t0.4\n" * 2, ("--model", "{llama}"), "one column per query head?"),
    ("duo", "0.1\t0.2\n" * 3, ("--layers", "2", "--heads", "4", "--kv-heads", "2"), "has 3 rows x 2 columns"),
    ("duo", "0.1\t0.2\n", ("--layers", "1", "--heads", "4"), "give --kv-heads (or --model)"),
    ("duo", "0.1\t0.2\n0.3\n", ("--model", "{llama}"), "line 2 has 1 values, line 1 has 2"),
    ("duo", "0.1\tnan\n0.3\t0.4\n", ("--model", "{llama}"), "line 1: 'nan' is not a finite number"),
    ("duo", "\n\n", ("--model", "{llama}"), "is empty"),
    ("csv", "layer,head,score\n2,0,0.5\n", ("--model", "{llama}"), "line 2 names head 2-0, but the model has 2 "
                                                                    "layers x 4 heads"),
    ("csv", "0,4,0.5\n", ("--model", "{phi3}"), "names head 0-4"),
    ("csv", "layer,head,weight\n0,1,0.5\n", ("--model", "{llama}"), "a header must name the columns layer, head"),
    ("csv", "0,1,0.5\n0,1,0.7\n", ("--model", "{llama}"), "line 2: head 0-1 is listed twice"),
    ("csv", "0,1\n", ("--model", "{llama}"), "line 1: expected 3 fields (layer, head, score), got 2"),
    ("csv", "0,1,0.5\n1,2\n", ("--model", "{llama}"), "line 2: expected 3 fields (layer, head, score), got 2"),
    ("csv", "0,1,high\n", ("--model", "{llama}"), "line 1: 'high' is not a number"),
    ("csv", "0,-1,0.5\n", ("--model", "{llama}"), "head '-1' is not a whole number"),
    ("csv", "layer,head,score\n", ("--model", "{llama}"), "has a header and no rows"),
    ("csv", "0,1,0.5\n", ("--layers", "2"), "give --model, or --layers and --heads"),
    ("csv", "0,1,0.5\n", ("--model", "{llama}", "--heads", "4"), "give --model or --heads, not both"),
    ("csv", "0,1,0.5\n", ("--layers", "2", "--heads", "4", "--kv-heads", "3"), "4 query heads do not split into 3"),
])
def test_a_file_of_another_shape_or_malformed_is_one_line(kind, text, args, message, tiny_config_dirs, tmp_path,
                                                           capsys):
    source = tmp_path / "in.txt"
    source.write_text(text)
    args = [a.format(**tiny_config_dirs) for a in args]
    code, _, err = _rh(capsys, "import", kind, source, *args, "--output", tmp_path / "out.json")
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "out.meta.json").exists()


def test_an_existing_score_file_is_kept_without_force(tmp_path, capsys):
    source, out = tmp_path / "t.csv", tmp_path / "out.json"
    source.write_text("0,1,0.5\n")
    out.write_text("{}")
    code, _, err = _rh(capsys, "import", "csv", source, "--layers", 1, "--heads", 2, "--output", out)
    assert code == 2 and "exists; pass --force" in err and out.read_text() == "{}"
    code, _, err = _rh(capsys, "import", "csv", source, "--layers", 1, "--heads", 2, "--output", out, "--force")
    assert code == 0 and json.loads(out.read_text()) == {"0-0": [], "0-1": [0.5]}
    code, _, err = _rh(capsys, "import", "duo", tmp_path / "missing.tsv", "--layers", 1, "--heads", 2, "--kv-heads", 1,
                       "--output", tmp_path / "x.json")
    assert code == 2 and "missing.tsv does not exist" in err
