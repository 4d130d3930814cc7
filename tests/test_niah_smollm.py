"""SmolLM2-135M-Instruct solves the paper-needle NIAH at ~1K tokens through the stock lm-eval CLI (chat template)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rh_eval.plots.niah import niah_cells
from rh_models.zoo import resolve_pretrained


@pytest.mark.smollm
def test_smollm2_finds_paper_needles(tmp_path):
    # 2 x 2 cells x 2 needles (lasagna, lighthouse): 8 generations keep this test short on 2 CPU cores
    metadata = {"lengths": [800, 1200], "depths": [25, 75], "needles": "paper", "haystack": "pg_essays", "samples": 2}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
         f"pretrained={resolve_pretrained('smollm2-135m')},dtype=float32", "--device", "cpu", "--tasks", "rh_niah",
         "--metadata", json.dumps(metadata), "--apply_chat_template", "--batch_size", "1",
         "--output_path", str(tmp_path), "--log_samples"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Left truncation" not in done.stderr
    samples = [json.loads(line) for line in next(tmp_path.rglob("samples_rh_niah_paper_*.jsonl")).open()]
    assert len(samples) == 8
    assert all(s["arguments"]["gen_args_0"]["arg_0"].startswith("<|im_start|>") for s in samples)
    cells = niah_cells(tmp_path)
    assert set(cells) == {(800, 25), (800, 75), (1200, 25), (1200, 75)}
    assert sum(score >= 0.5 for score in cells.values()) >= 3, cells
    results = json.loads(next(tmp_path.rglob("results_*.json")).read_text())["results"]
    assert results["rh_niah"]["score,none"] >= 0.6, results["rh_niah"]
