"""Shared fixtures: tiny random models of many architectures (built from configs, no download) and SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

VOCAB = 128
_SMALL = dict(vocab_size=VOCAB, max_position_embeddings=256)


def _llama_like(cls, **extra):
    return cls(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, **_SMALL, **extra)


TINY_CONFIGS = {
    "llama": lambda: _llama_like(transformers.LlamaConfig),
    "mistral": lambda: _llama_like(transformers.MistralConfig, sliding_window=None),
    "qwen2": lambda: _llama_like(transformers.Qwen2Config),
    "qwen3": lambda: _llama_like(transformers.Qwen3Config, head_dim=16),
    "gemma": lambda: _llama_like(transformers.GemmaConfig, head_dim=16),
    "gemma3": lambda: transformers.Gemma3TextConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        head_dim=16, sliding_window=6, layer_types=["sliding_attention", "full_attention"], **_SMALL
    ),
    "phi3": lambda: transformers.Phi3Config(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, **_SMALL
    ),
    "gpt2": lambda: transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=256),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, **_SMALL
    ),
    "opt": lambda: transformers.OPTConfig(
        hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=64,
        vocab_size=VOCAB, max_position_embeddings=256
    ),
}
ARCHITECTURES = sorted(TINY_CONFIGS)


def tiny_model(arch: str, attn_implementation: str = "sdpa", seed: int = 0) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(
        TINY_CONFIGS[arch](), attn_implementation=attn_implementation, dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="session")
def tiny_config_dirs(tmp_path_factory) -> dict[str, Path]:
    """arch -> a folder holding only that tiny model's config.json: a model's shape for ``--model``, no weights."""
    folders = {}
    for arch in ("llama", "gemma3", "phi3"):
        folders[arch] = tmp_path_factory.mktemp(f"config-{arch}")
        TINY_CONFIGS[arch]().save_pretrained(folders[arch])
    return folders


@pytest.fixture(scope="session")
def smollm_dir() -> str:
    """Local folder of the embedded SmolLM2-135M-Instruct (converted from the GGUF on first use)."""
    from rh_models.zoo import resolve_pretrained

    return resolve_pretrained("smollm2-135m")


# The SmolLM2 tests whose point is what a detection found, not how it ran, share this one detection (the tests of
# detection itself, its resume and its kills run their own).
SMOLLM_DETECTION_GRID = dict(lengths=[500, 1000], depths=[0, 50, 100], samples=3, max_gen_toks=24)


@pytest.fixture(scope="session")
def smollm_paper_detection(tmp_path_factory) -> tuple[Path, dict]:
    """(score file, summary) of `rh detect` on SmolLM2, paper needles, ``SMOLLM_DETECTION_GRID`` (18 tests):
    test_recording checks it is sparse and agrees with a KV-needle detection, test_compare masks its top heads."""
    from rh_eval.detect import detect
    from rh_models.lm import RHHFLM

    lm = RHHFLM(pretrained="smollm2-135m", device="cpu", batch_size=1)
    out = tmp_path_factory.mktemp("smollm-detection") / "paper.json"
    summary = detect(lm, out, needles="paper", progress=False, **SMOLLM_DETECTION_GRID)
    return out, summary


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm_dir) -> Path:
    """A tiny random llama saved with SmolLM2's tokenizer, loadable by lm-eval's `pretrained=`."""
    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=49152, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    transformers.AutoTokenizer.from_pretrained(smollm_dir).save_pretrained(path)
    return path


# The tiny llama's demo, run once a session: test_demo checks the workflow, test_report opens its report in Chromium.
# A tiny random model answers no needle, so its detection ranks no head: --tie-break random draws the top-1 from the
# unscored heads (and records it); without it the demo is refused.
TINY_DEMO_ARGS = ["--k", "1", "--seeds", "2", "--detect-lengths", "200", "--detect-depths", "50", "--detect-samples",
                  "1", "--niah-lengths", "200", "--niah-depths", "0,100", "--niah-samples", "1", "--limit", "2",
                  "--tie-break", "random"]


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory, tiny_llama_dir) -> tuple[Path, str, str]:
    """``(folder, stdout, stderr)`` of ``rh demo`` on the tiny llama, in-process, NIAH and the CoT pair (~10 s)."""
    import contextlib
    import io

    from rh_eval.cli import main

    out = tmp_path_factory.mktemp("tiny-demo") / "out"
    printed, terminal = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(terminal):
        assert main(["demo", "--model", str(tiny_llama_dir), "--output-dir", str(out), *TINY_DEMO_ARGS]) == 0
    return out, printed.getvalue(), terminal.getvalue()


@pytest.fixture(scope="session")
def tiny_task_dir(tmp_path_factory) -> Path:
    """A two-doc local generation task (`tiny_local`) for end-to-end CLI runs."""
    path = tmp_path_factory.mktemp("tiny-task")
    (path / "data.jsonl").write_text('{"q": "The sky is", "a": "blue"}\n{"q": "Two plus two is", "a": "four"}\n')
    (path / "tiny.yaml").write_text(
        "task: tiny_local\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files: {path / 'data.jsonl'}\n"
        "test_split: train\n"
        "output_type: generate_until\n"
        'doc_to_text: "{{q}}"\n'
        'doc_to_target: "{{a}}"\n'
        "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 6\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    higher_is_better: true\n"
    )
    return path


# --- the stock CLIs, as a user types them ----------------------------------------------------------------------

OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
CLI_MEMORY_LIMIT_GB = 8  # address space of one CLI process: a blow-up fails the test instead of the machine


def _limit_memory(gigabytes: float):
    import resource

    def apply() -> None:
        limit = int(gigabytes * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def run_cli(program: str, *args: str, env: dict | None = None, cwd=None, timeout: int = 600,
            memory_gb: float = CLI_MEMORY_LIMIT_GB):
    """Run ``lm_eval`` / ``rh`` / ``accelerate`` of this venv in a subprocess under an address-space limit."""
    import subprocess
    import sys

    executable = Path(sys.executable).with_name(program)
    return subprocess.run([str(executable), *args], capture_output=True, text=True, env={**OFFLINE_ENV, **(env or {})},
                          cwd=cwd, timeout=timeout, preexec_fn=_limit_memory(memory_gb))


def rh_error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("rh-eval: error:")]


# A test that starts one of this venv's programs (lm_eval, rh, accelerate, python -m pip, ...) costs seconds of start-up
# each; `make test-fast` leaves those out by their marks, so the marks must be right: an unmarked test that starts
# one fails here, naming itself. (Other programs, e.g. git run by lm-eval, are not counted.)
SUBPROCESS_MARKS = {"slow", "smollm", "gemma", "vllm"}


@pytest.fixture(autouse=True)
def _subprocess_tests_are_marked(request, monkeypatch):
    if SUBPROCESS_MARKS & {mark.name for mark in request.node.iter_markers()}:
        return
    import subprocess
    import sys

    venv_bin, real_init = Path(sys.executable).parent, subprocess.Popen.__init__

    def guarded(self, args, *rest, **kwargs):
        program = args[0] if isinstance(args, (list, tuple)) else str(args).split()[0]
        if Path(str(program)).parent == venv_bin:
            raise AssertionError(f"{request.node.nodeid} starts {Path(str(program)).name} in a subprocess: mark it "
                                 f"@pytest.mark.slow (or smollm/gemma/vllm) so that `make test-fast` leaves it out")
        real_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)


class FakeMaskedLM:
    """Base of the RHHFLM stand-ins of the workflow tests: the mask record and head ranking as the real one's."""

    n_layers, n_heads = 2, 2
    info: dict = {}
    dtype = "torch.float32"  # what numerics() reports: a test changes it to see a resume refused

    def mask_info(self):
        return dict(self.info)

    def numerics(self):
        return {"dtype": self.dtype, "device": "cpu", "attention": "sdpa"}

    def use_head_scores(self, path):
        from rh_models.heads import HeadScores

        self.head_scores = HeadScores.load(path, self.n_layers, self.n_heads)
        return self

    def use_head_means(self, path):
        from rh_models.head_means import HeadMeans

        self.head_means = HeadMeans.load(path, self.n_layers, self.n_heads)
        return self
