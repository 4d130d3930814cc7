"""``rh bench`` runs every contender and reports ratios to stock lm-eval (never timing assertions)."""

from __future__ import annotations

import json

import pytest

from rh_eval.bench.overhead import naive_attention_gb
from rh_eval.cli import main


def test_naive_attention_map_size():
    # SmolLM2 (30 layers x 9 heads) at 2K prompt tokens + 32 new, float32: the README's ~4.5 GB
    assert naive_attention_gb(30, 9, 2000, 32) == pytest.approx(30 * 9 * 2000 * 2032 * 4 / 1e9)
    assert 4.3 < naive_attention_gb(30, 9, 2000, 32) < 4.5 and naive_attention_gb(30, 9, 8000, 32) > 69


@pytest.mark.smollm
def test_bench_end_to_end_on_a_tiny_model(tmp_path, tiny_llama_dir, capsys):
    out = tmp_path / "bench.json"
    # the naive contender fits at 150 tokens but not at 300 under a 0.0015 GB limit
    # (2 layers x 4 heads x 300 x 304 x 4 B = 0.0029 GB of maps)
    assert main(["bench", "--model", str(tiny_llama_dir), "--lengths", "150,300", "--new-tokens", "4",
                 "--repeats", "2", "--mask-heads", "0-1;1-3", "--naive-limit-gb", "0.0015",
                 "--detect-lengths", "150", "--detect-depths", "50,100", "--detect-samples", "1",
                 "--contenders", "hf,none,mask,kv,record,naive", "--output", str(out)]) == 0  # the mass scores: below
    result = json.loads(out.read_text())
    rows = {(row["contender"], row["length"]): row for row in result["overhead"]}
    assert {name for name, _ in rows} == {"hf", "rh-hf none", "rh-hf mask 2", "rh-hf kv random:10%", "rh-hf record",
                                          "naive eager"}
    assert result["mask_heads"] == "0-1;1-3" and result["weights_mb"] > 0 and result["kv_full_heads"] == "random:10%"
    for length in (150, 300):
        assert rows[("hf", length)]["time_ratio_median"] == 1.0  # every ratio divides by the stock path
        for name in ("rh-hf none", "rh-hf mask 2", "rh-hf kv random:10%", "rh-hf record"):
            row = rows[(name, length)]
            assert row["seconds_median"] > 0 and row["time_ratio_min"] <= row["time_ratio_median"] <= row["time_ratio_max"]
            assert row["memory_ratio"] > 0
    assert "seconds_median" in rows[("naive eager", 150)]
    assert rows[("naive eager", 300)]["note"].startswith("not run: its attention maps alone need")
    reuse = {row["contender"]: row for row in result["prefix_reuse"]["table"]}
    assert list(reuse) == ["no reuse", "reuse, masked sdpa", "reuse", "no reuse, cell batches", "reuse, cell batches"]
    assert result["prefix_reuse"]["repeats"] == 1 and result["prefix_reuse"]["reuse_speedup_in_cell_batches"] > 0
    assert reuse["no reuse"]["speedup_median"] == 1.0 and reuse["no reuse"]["prompt_tokens_reused"] == 0
    for name in ("reuse, masked sdpa", "reuse"):
        assert reuse[name]["prompt_tokens_reused"] > 30  # the depth-50 prompt re-uses the hay before its needle
        assert reuse[name]["prompt_tokens_prefilled"] == reuse["no reuse"]["prompt_tokens_prefilled"] - reuse[name]["prompt_tokens_reused"]
        assert reuse[name]["decode_steps"] == reuse["no reuse"]["decode_steps"]
    assert result["prefix_reuse"]["identical_scores"] is True
    printed = capsys.readouterr().out
    assert list(result["naive_vs_record"]) == ["150"] and result["naive_vs_record"]["150"] > 0  # JSON keys: str
    assert "| rh-hf record" in printed and "naive eager vs rh-hf record (median s): " in printed and "| reuse, masked sdpa" in printed and f"wrote {out}" in printed


@pytest.mark.slow
def test_bench_reuse_table_alone_and_nothing_to_measure(tmp_path, tiny_llama_dir, capsys):
    out = tmp_path / "reuse.json"
    assert main(["bench", "--model", str(tiny_llama_dir), "--lengths", "", "--detect-lengths", "150",
                 "--detect-depths", "100,50", "--detect-samples", "2", "--detect-repeats", "1",
                 "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["overhead"] == [] and result["prefix_reuse"]["identical_scores"] is True
    assert "identical scores: yes" in capsys.readouterr().out
    assert main(["bench", "--lengths", "", "--detect-lengths", "", "--output", str(out)]) == 2
    assert "nothing to measure" in capsys.readouterr().err
    assert main(["bench", "--model", str(tiny_llama_dir), "--lengths", "", "--detect-lengths", "150", "--detect-depths",
                 "100", "--detect-samples", "1", "--detect-repeats", "1", "--detect-contenders", "reuse",
                 "--output", str(out)]) == 0
    assert [row["contender"] for row in json.loads(out.read_text())["prefix_reuse"]["table"]] == ["no reuse", "reuse"]
    assert main(["bench", "--model", str(tiny_llama_dir), "--lengths", "", "--detect-lengths", "150",
                 "--detect-contenders", "fast", "--output", str(out)]) == 2
    assert "unknown detection contender 'fast'" in capsys.readouterr().err


def test_overhead_contenders_are_checked_before_anything_loads(capsys):
    from rh_eval.bench.overhead import pick_overhead_contenders

    assert pick_overhead_contenders("kv, mask") == ("kv", "mask")
    assert main(["bench", "--contenders", "kv,flash", "--lengths", "100"]) == 2
    assert ("--contenders: unknown flash; choose from hf, none, mask, kv, record, attention, induction, echo, naive"
            in capsys.readouterr().err)


def test_each_mass_score_contender_reads_the_bench_prompt_and_changes_no_token(tiny_llama_dir):
    """`rh bench`'s attention / induction / echo contenders: the same lm-eval generation as stock hf, with the score's
    observer reading the prompt's prefill (each call checks every layer was read once). The end-to-end test above
    times the other contenders only: three more would cost CI three more fresh-process memory probes per length."""
    from rh_eval.bench.overhead import MASS_CONTENDERS, Workload

    workload = Workload(str(tiny_llama_dir), [150], new_tokens=3, mask_heads="0-1")
    try:
        stock = workload.call("hf", 150)()
        assert [workload.call(key, 150)() for key in MASS_CONTENDERS] == [stock] * 3
        assert [workload.label(key) for key in MASS_CONTENDERS] == ["rh-hf attention", "rh-hf induction", "rh-hf echo"]
    finally:
        workload.cleanup()
