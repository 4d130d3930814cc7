"""``rh_eval.models.load_hf``: the one place a workflow builds ``rh-hf``, and the arguments each workflow hands it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from rh_eval import compare, demo, detect, means
from rh_eval.compare import CompareConfig
from rh_eval.models import load_hf


class Loaded(Exception):
    """Raised by the stand-in constructor: what RHHFLM was given, without loading anything."""


@pytest.fixture
def built(monkeypatch):
    from rh_models import lm

    def init(self, **kwargs):
        raise Loaded(kwargs)

    monkeypatch.setattr(lm.RHHFLM, "__init__", init)

    def kwargs_of(call) -> dict:
        with pytest.raises(Loaded) as loaded:
            call()
        return loaded.value.args[0]

    return kwargs_of


def test_defaults_and_model_args(built):
    assert built(lambda: load_hf("m")) == {"pretrained": "m", "batch_size": 1, "head_scores": None}
    assert built(lambda: load_hf("m", 8, Path("s.json"), dtype="float32")) == {
        "pretrained": "m", "batch_size": 8, "head_scores": "s.json", "dtype": "float32"}


def test_every_workflow_builds_rh_hf_through_it(built, tmp_path):
    config = CompareConfig(tasks=("t",), output_dir=tmp_path, model="m", batch_size=4, model_args={"dtype": "bf16"})
    assert built(lambda: compare.load_model(config, tmp_path / "s.json")) == {
        "pretrained": "m", "batch_size": 4, "head_scores": str(tmp_path / "s.json"), "dtype": "bf16"}
    assert built(lambda: detect.detect("m", tmp_path / "d.json", model_args={"device": "cpu"})) == {
        "pretrained": "m", "batch_size": 1, "head_scores": None, "device": "cpu"}
    assert built(lambda: demo.ModelOnce("m", 48)()) == {"pretrained": "m", "batch_size": 48, "head_scores": None}
    args = argparse.Namespace(model="m", output=str(tmp_path / "means.json"), lengths=None, text_file=None, tasks=None,
                              limit=None, metadata=None, include_path=[], apply_chat_template=False,
                              model_args="dtype=float32", force=False)
    assert built(lambda: means.run(args)) == {"pretrained": "m", "batch_size": 1, "head_scores": None,
                                              "dtype": "float32"}
