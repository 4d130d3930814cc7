"""The NIAH tasks of lm-eval: ``--metadata`` (and the model args lm-eval merges in) -> tokenizer, docs, task class.

Usage (stock lm-eval CLI; the tokenizer and the model's max length come from ``--model_args``)::

    lm_eval --model hf --model_args pretrained=$(rh models path smollm2-135m) --tasks rh_niah \\
        --metadata '{"lengths":[1000,2000],"depths":[0,50,100],"needles":"paper","haystack":"pg_essays"}' \\
        --log_samples --output_path out

Why a module of its own: the documents are built by :mod:`rh_tasks.niah_docs` (pure, no lm-eval); this is the
glue the YAMLs name. :class:`NIAHTask` reserves the task's ``max_gen_toks`` when sizing, turns the grid into
per-length/per-depth metric keys, and re-checks each final context before generation, so a prompt lm-eval would
truncate is refused instead.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from rh_models.arguments import is_bool_word, parse_bool, parse_int
from rh_models.compat import load_task_yaml, task_metric_tables
from rh_models.errors import RHError
from rh_tasks.needles import KVOptions
from rh_tasks.niah_docs import DEFAULT_DEPTHS, DEFAULT_MAX_GEN_TOKS, build_docs, count_tokens, load_tokenizer

# metadata keys build_docs understands (plus the model args lm-eval merges in: tokenizer/pretrained/model/max_length)
METADATA_KEYS = (
    "lengths", "depths", "needles", "haystack", "seed", "samples", "answer_prefix", "max_gen_toks", "max_length",
    "keys", "values", "num_distractors", "num_values", "num_queries", "haystack_split", "haystack_field",
    "cell_metrics", "tokenizer", "pretrained", "model",
)



def generation_stop() -> list[str]:
    """The NIAH tasks' stop sequences, read from their YAML (one source for ``rh detect`` and the tasks)."""
    from rh_tasks import task_config_dir

    return list(load_task_yaml(task_config_dir() / "rh_niah_common.yaml")["generation_kwargs"]["until"])


# --- lm-eval glue: metadata -> tokenizer, max length, docs -----------------------------------------------------

def model_max_length(name: str, tokenizer: Any, trust_remote_code: bool = False) -> int:
    """The context length lm-eval's HFLM would use for this model when ``max_length`` is not given."""
    from transformers import AutoConfig

    from rh_models.shape import context_length
    from rh_models.zoo import resolve_pretrained

    try:
        config = AutoConfig.from_pretrained(resolve_pretrained(name), trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 -- tokenizer-only repos (API models): fall back like lm-eval does
        config = None
    return context_length(config, tokenizer)


def _check_metadata_keys(metadata: dict[str, Any]) -> None:
    """Reject likely typos of our keys (model args that lm-eval merges in are fine)."""
    for key in metadata:
        if key in METADATA_KEYS or key in ("version", "config_source"):
            continue
        close = difflib.get_close_matches(key, METADATA_KEYS, n=1, cutoff=0.8)
        if close:
            raise RHError(f"unknown NIAH metadata key {key!r}; did you mean {close[0]!r}?")


def _as_bool(name: str, value: Any) -> bool:
    return parse_bool(f"metadata {name}", value)


def docs_from_metadata(**metadata: Any) -> tuple[list[dict[str, Any]], Any, int]:
    """Docs for lm-eval's merged ``--model_args`` + ``--metadata``; also the tokenizer and max length used."""
    _check_metadata_keys(metadata)
    name = next((metadata[k] for k in ("tokenizer", "pretrained", "model")
                 if isinstance(metadata.get(k), str) and metadata[k]), None)
    if name is None:
        raise RHError("NIAH counts lengths in the model's tokens: pass --model_args pretrained=... "
                      "(or tokenizer=...), or --metadata '{\"tokenizer\": \"...\"}'")
    trust = _as_bool("trust_remote_code", metadata.get("trust_remote_code", False))
    tokenizer = load_tokenizer(name, trust)
    max_length = metadata.get("max_length") or model_max_length(
        metadata.get("pretrained") or name, tokenizer, trust)
    prefix = metadata.get("answer_prefix", True)
    if not isinstance(prefix, str) or is_bool_word(prefix):
        prefix = _as_bool("answer_prefix", prefix)
    options: dict[str, Any] = dict(
        lengths=metadata.get("lengths"),
        depths=metadata.get("depths", DEFAULT_DEPTHS),
        needles=str(metadata.get("needles", "paper")),
        haystack=str(metadata.get("haystack", "pg_essays")),
        seed=parse_int("metadata seed", metadata.get("seed", 0), minimum=0),
        max_length=max_length,
        max_gen_toks=metadata.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS),
        answer_prefix=prefix,
        samples=None if metadata.get("samples") is None else parse_int("metadata samples", metadata["samples"], minimum=1),
        cell_metrics=_as_bool("cell_metrics", metadata.get("cell_metrics", False)),
        kv=KVOptions(key_type=str(metadata.get("keys", "words")), value_type=str(metadata.get("values", "numbers")),
                     **{key: parse_int(f"metadata {key}", metadata[key], minimum=1)
                        for key in ("num_distractors", "num_values", "num_queries") if key in metadata}),
        haystack_split=str(metadata.get("haystack_split", "train")),
        haystack_field=str(metadata.get("haystack_field", "text")),
    )
    docs = build_docs(tokenizer, **options)
    return docs, tokenizer, parse_int("metadata max_length", max_length, minimum=1)


# --- the lm-eval task class --------------------------------------------------------------------------------------

NOT_THIS_CELL = -1.0


def mean_of_own_cells(scores: Sequence[float]) -> float:
    """Mean over the docs of one length/depth; the ``NOT_THIS_CELL`` placeholders of other docs are ignored."""
    own = [score for score in scores if score != NOT_THIS_CELL]
    return sum(own) / len(own) if own else float("nan")


def _make_task_class() -> type:
    from lm_eval.api.task import ConfigurableTask

    class NIAHTask(ConfigurableTask):
        """ConfigurableTask that sizes its grid for its own ``max_gen_toks`` and reports per-length/depth keys."""

        def __init__(self, config: dict | None = None, **kwargs: Any) -> None:
            config = {k: v for k, v in dict(config or {}).items() if k != "class"}
            self._tokenizer: Any = None
            self._max_length = 0
            super().__init__(config=config, **kwargs)
            self._register_breakdown_metrics(mean_of_own_cells)

        def _reserved_gen_toks(self) -> int:
            return int((self.config.generation_kwargs or {}).get("max_gen_toks") or DEFAULT_MAX_GEN_TOKS)

        def download(self, dataset_kwargs: dict | None = None, **kwargs: Any) -> None:
            import datasets

            metadata = dict(self.config.metadata or {})
            metadata.pop("version", None)
            metadata.pop("config_source", None)
            asked = parse_int("metadata max_gen_toks", metadata.get("max_gen_toks", 1), minimum=1)
            metadata["max_gen_toks"] = max(asked, self._reserved_gen_toks())
            docs, self._tokenizer, self._max_length = docs_from_metadata(**metadata, **(dataset_kwargs or {}))
            self._reserved = metadata["max_gen_toks"]
            self.dataset = {"test": datasets.Dataset.from_list(docs)}

        def _register_breakdown_metrics(self, mean_fn: Any) -> None:
            keys: dict[str, None] = {}
            for doc_keys in self.dataset["test"]["metric_keys"]:
                keys.update(dict.fromkeys(doc_keys))
            self._breakdown_keys = list(keys)
            functions, kwargs, aggregations, higher_is_better = task_metric_tables(self)
            for key in keys:
                functions[key] = None
                kwargs[key] = {}
                aggregations[key] = mean_fn
                higher_is_better[key] = True

        def process_results(self, doc: dict, results: Any) -> dict:
            """Every doc reports every breakdown key (``NOT_THIS_CELL`` for other cells), as lm-eval's ruler does:
            under ``accelerate launch`` each rank gathers every metric key, even for cells it never saw."""
            scores = super().process_results(doc, results)
            return {**dict.fromkeys(self._breakdown_keys, NOT_THIS_CELL), **scores}

        def construct_requests(self, doc: dict, ctx: Any, **kwargs: Any):
            if isinstance(ctx, str) and self._tokenizer is not None:
                self._check_context(doc, ctx)
            return super().construct_requests(doc, ctx, **kwargs)

        def _check_context(self, doc: dict, ctx: str) -> None:
            """The final context (chat template, system instruction included) must hold each needle, uncut."""
            gen = int((self.config.generation_kwargs or {}).get("max_gen_toks") or self._reserved)
            room = self._max_length - gen
            n = count_tokens(self._tokenizer, ctx, special=True)
            if n > room:
                raise RHError(
                    f"{self.config.task}: the prompt of cell {doc['cell']} is {n} tokens but the model reads only "
                    f"{room} before generating (max_length {self._max_length} - max_gen_toks {gen}); lm-eval would "
                    f"cut the needle. Use smaller lengths or pass --metadata '{{\"max_gen_toks\": {gen}}}'"
                )
            for needle in doc["rh_needles"]:
                if ctx.count(needle) != 1:
                    raise RHError(f"{self.config.task}: needle {needle[:50]!r} occurs {ctx.count(needle)} times "
                                  f"in the final prompt of cell {doc['cell']}; expected exactly once")

    return NIAHTask


def __getattr__(name: str) -> Any:
    # The task class subclasses lm-eval's ConfigurableTask; build it on first use so `build_docs` stays importable
    # (and cheap) without lm-eval's task machinery.
    if name == "NIAHTask":
        cls = _make_task_class()
        globals()["NIAHTask"] = cls
        return cls
    raise AttributeError(name)
