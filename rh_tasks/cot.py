"""lm-eval glue of the chain-of-thought suite: what ``task_configs/rh_cot*.yaml`` and ``rh_gsm8k*.yaml`` call.

Usage (stock lm-eval CLI)::

    lm_eval --model hf --model_args pretrained=$(rh models path smollm2-135m) --tasks rh_cot \\
        --metadata '{"cot_docs": 50, "cot_seed": 7}'
    lm_eval --model hf --model_args pretrained=... --tasks rh_gsm8k_pair \\
        --metadata '{"gsm8k_path": "/data/gsm8k/test.jsonl"}'      # or: RH_GSM8K_PATH=/data/gsm8k

Why Python at all: YAML can say everything about prompts, filters and metrics, but not "generate N documents
from this seed" (:func:`synthetic_dataset`), "read GSM8K from a local JSONL instead of the hub"
(:func:`gsm8k_dataset`), or "start from lm-eval's own ``gsm8k-cot.yaml``, wherever lm-eval is installed"
(:class:`LMEvalBasedTask`). The last keeps ``rh_gsm8k_cot`` / ``rh_gsm8k`` identical to lm-eval's
``gsm8k_cot`` / ``gsm8k`` by reference instead of by copy. Bad metadata raises
:class:`~rh_models.errors.RHError`, printed by the stock CLI as one line.

``--metadata`` is shared by every task of a run (and lm-eval adds the model arguments to it), so unknown keys
are ignored, except misspelt ones of ours: a ``cot_*`` or ``gsm8k_*`` key we do not know is an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rh_models.arguments import parse_int
from rh_models.errors import RHError
from rh_tasks.cot_data import DOC_MAKERS, generate

DEFAULT_DOCS = 100
DEFAULT_SEED = 1234
MAX_DOCS = 100_000
COT_KEYS = ("cot_docs", "cot_seed")
GSM8K_KEYS = ("gsm8k_path",)
GSM8K_ENV = "RH_GSM8K_PATH"
GSM8K_HUB = ("openai/gsm8k", "main")


def _check_known(metadata: dict[str, Any], prefix: str, known: tuple[str, ...]) -> None:
    for key in metadata:
        if key.startswith(prefix) and key not in known:
            raise RHError(f"unknown metadata key {key!r}; known {prefix}* keys: {', '.join(known)}")


def cot_options(metadata: dict[str, Any]) -> tuple[int, int]:
    """``(docs, seed)`` from run metadata, with defaults; RHError on bad values or misspelt ``cot_*`` keys."""
    _check_known(metadata, "cot_", COT_KEYS)
    docs = parse_int("metadata cot_docs", metadata.get("cot_docs", DEFAULT_DOCS), 1, MAX_DOCS)
    seed = parse_int("metadata cot_seed", metadata.get("cot_seed", DEFAULT_SEED), 0)
    return docs, seed


def synthetic_dataset(generator: str, **metadata: Any) -> Any:
    """lm-eval ``custom_dataset``: ``cot_docs`` seeded documents of ``generator`` as a ``test`` split.

    ``generator`` comes from the YAML's ``dataset_kwargs``; the rest is the run's metadata.
    """
    import datasets

    if generator not in DOC_MAKERS:
        raise RHError(f"unknown generator {generator!r} in dataset_kwargs; known: {', '.join(DOC_MAKERS)}")
    docs, seed = cot_options(metadata)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(generate(generator, docs, seed))})


# --- GSM8K ---------------------------------------------------------------------------------------------------

def gsm8k_files(metadata: dict[str, Any]) -> tuple[Path, Path | None] | None:
    """``(test.jsonl, train.jsonl or None)`` from ``gsm8k_path`` or ``$RH_GSM8K_PATH``; None means the hub.

    The path may name the test file or the folder holding ``test.jsonl``; ``train.jsonl`` beside it is used
    for few-shot examples when present.
    """
    _check_known(metadata, "gsm8k_", GSM8K_KEYS)
    raw = metadata.get("gsm8k_path") or os.environ.get(GSM8K_ENV)
    if not raw:
        return None
    source = "metadata gsm8k_path" if metadata.get("gsm8k_path") else f"${GSM8K_ENV}"
    if not isinstance(raw, str):
        raise RHError(f"{source} must be a path string, got {raw!r}")
    path = Path(raw).expanduser()
    test = path / "test.jsonl" if path.is_dir() else path
    if not test.is_file():
        raise RHError(f"{source}: {test} is not a file (give test.jsonl or the folder that holds it)")
    train = test.with_name("train.jsonl")
    return test, (train if train.is_file() and train != test else None)


def read_gsm8k_jsonl(path: Path) -> list[dict[str, str]]:
    """GSM8K records (``question``, ``answer``) from a JSONL file; RHError naming the line if one is bad."""
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RHError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("question", "answer")):
                raise RHError(f"{path}:{number}: a GSM8K record needs string fields 'question' and 'answer'")
            records.append({"question": record["question"], "answer": record["answer"]})
    if not records:
        raise RHError(f"{path} holds no GSM8K records")
    return records


def gsm8k_dataset(**metadata: Any) -> Any:
    """lm-eval ``custom_dataset``: GSM8K ``test`` (+ ``train``) from a local JSONL, else ``openai/gsm8k`` main."""
    import datasets

    files = gsm8k_files(metadata)
    if files is None:
        try:
            return datasets.load_dataset(*GSM8K_HUB)
        except Exception as exc:  # offline without a cached copy, no network, ...: say what to do instead
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RHError(
                f"cannot load {GSM8K_HUB[0]} from the hub or its cache ({first_line}); pass "
                f"--metadata '{{\"gsm8k_path\": \".../test.jsonl\"}}' or set {GSM8K_ENV}"
            ) from None
    test, train = files
    splits = {"test": datasets.Dataset.from_list(read_gsm8k_jsonl(test))}
    if train is not None:
        splits["train"] = datasets.Dataset.from_list(read_gsm8k_jsonl(train))
    return datasets.DatasetDict(splits)


# --- tasks that start from one of lm-eval's own YAMLs ----------------------------------------------------------

def lm_eval_task_dir() -> Path:
    """The folder of lm-eval's bundled task YAMLs (found without importing every task)."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


def lm_eval_base_config(relative: str) -> dict[str, Any]:
    """lm-eval's own task YAML at ``relative`` (e.g. ``gsm8k/gsm8k-cot.yaml``), includes and functions resolved."""
    from rh_models.compat import load_task_yaml

    path = lm_eval_task_dir() / relative
    if not path.is_file():
        raise RHError(f"lm-eval has no task file {relative} (looked in {path.parent}); is lm-eval >= 0.4.9 installed?")
    config = load_task_yaml(path, resolve_func=True)
    for key in ("tag", "group", "task_list", "task_alias"):
        config.pop(key, None)
    return config


def _make_task_class() -> type:
    from lm_eval.api.task import (
        ConfigurableTask,  # imported only when lm-eval asks for the class
    )

    class LMEvalBasedTask(ConfigurableTask):
        """A ConfigurableTask whose YAML names an lm-eval task file in ``lm_eval_base`` and overrides its keys.

        Our keys win; ``metadata`` is merged. The few-shot split, if the base has one, must exist in our
        dataset (a local GSM8K folder without ``train.jsonl`` cannot feed ``rh_gsm8k``'s 5 shots).
        """

        def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
            ours = {k: v for k, v in dict(config or {}).items() if k != "class"}
            relative = ours.pop("lm_eval_base", None)
            if not relative:
                raise RHError(f"task {ours.get('task')!r} uses LMEvalBasedTask but its YAML has no lm_eval_base")
            base = lm_eval_base_config(relative)
            merged = {**base, **ours}
            merged["metadata"] = {**(base.get("metadata") or {}), **(ours.get("metadata") or {})}
            super().__init__(config=merged, **kwargs)

        def download(self, dataset_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            super().download(dataset_kwargs, **kwargs)
            split = self.config.fewshot_split
            if split and split not in self.dataset:
                raise RHError(
                    f"{self.config.task} takes few-shot examples from the {split!r} split, which the local GSM8K "
                    f"data lacks: put {split}.jsonl beside test.jsonl (rh_gsm8k_cot needs none)"
                )

    return LMEvalBasedTask


def __getattr__(name: str) -> Any:
    """``rh_tasks.cot.LMEvalBasedTask`` (for ``class: !function``), built on first access."""
    if name == "LMEvalBasedTask":
        globals()[name] = cls = _make_task_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
