"""Chain-of-thought suite: seeded data checked by an independent solver, prompts/filters/metric on hand-made
completions, GSM8K from a local JSONL, bad metadata as one line, the stock CLI end to end, and SmolLM2 above floor.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli

from rh_models.errors import RHError
from rh_tasks import cot, cot_data

TASKS = ("vartrack", "kvhop", "factsum")
GSM8K_DIR = Path("/work/shared/data/gsm8k")
needs_gsm8k = pytest.mark.skipif(not (GSM8K_DIR / "test.jsonl").is_file(), reason=f"no GSM8K at {GSM8K_DIR}")


# --- an independent solver: reads only the question text ---------------------------------------------------

def solve(task: str, question: str) -> int:
    sentences = re.findall(r"[^.?]+[.?]", question)
    facts, asked = [s.strip() for s in sentences[:-1]], sentences[-1].strip()
    if task == "vartrack":
        value: dict[str, int] = {}
        source: dict[str, str] = {}
        for fact in facts:
            if m := re.fullmatch(r"(\w+) has (\d+) coins\.", fact):
                assert m[1] not in value and m[1] not in source, f"{m[1]} defined twice"
                value[m[1]] = int(m[2])
            elif m := re.fullmatch(r"(\w+) has as many coins as (\w+)\.", fact):
                assert m[2] in value or m[2] in source, f"{m[2]} used before it is defined"
                source[m[1]] = m[2]
            else:
                raise AssertionError(f"unparsed fact {fact!r}")
        name = re.fullmatch(r"How many coins does (\w+) have\?", asked)[1]
        while name in source:
            name = source[name]
        return value[name]
    if task == "kvhop":
        key_of = dict(re.fullmatch(r"(\w+) has the (\w+) key\.", f).groups() for f in facts if " has the " in f)
        box_of = {k: int(b) for k, b in (re.fullmatch(r"The (\w+) key opens box (\d+)\.", f).groups()
                                          for f in facts if " opens " in f)}
        assert len(key_of) + len(box_of) == len(facts) and set(key_of.values()) == set(box_of)
        return box_of[key_of[re.fullmatch(r"Which box can (\w+) open\?", asked)[1]]]
    if task == "factsum":
        counts = {}
        for fact in facts:
            name, count, _ = re.fullmatch(r"(\w+) has (\d+) (\w+)\.", fact).groups()
            counts[name] = int(count)
        first, second = re.fullmatch(r"How many \w+ do (\w+) and (\w+) have together\?", asked).groups()
        return counts[first] + counts[second]
    raise AssertionError(task)


def check_doc(task: str, doc: dict[str, str]) -> None:
    expected = solve(task, doc["question"])
    assert doc["answer"] == str(expected)
    assert doc["cot"].endswith(f" The answer is {expected}.")
    # every sentence the chain of thought copies is in the question (arithmetic steps aside)
    for step in re.findall(r"[A-Z][^.]*\.", doc["cot"].removesuffix(f" The answer is {expected}.")):
        assert step in doc["question"], step


@pytest.mark.parametrize("task", TASKS)
def test_generated_docs_are_correct_and_deterministic(task):
    docs = cot_data.generate(task, 60, seed=3)
    for doc in docs:
        check_doc(task, doc)
    assert docs == cot_data.generate(task, 60, seed=3)
    assert docs[:10] == cot_data.generate(task, 10, seed=3)  # a smaller n is a prefix
    assert docs != cot_data.generate(task, 60, seed=4)
    assert len({d["question"] for d in docs}) == len(docs)
    answers = [d["answer"] for d in docs]
    assert max(answers.count(a) for a in set(answers)) < len(docs) / 3  # no dominant answer to guess


@pytest.mark.parametrize("task, options", [("vartrack", {"hops": 3, "chains": 4}), ("kvhop", {"people": 6}),
                                           ("factsum", {"people": 5})])
def test_harder_options_stay_correct(task, options):
    for doc in cot_data.generate(task, 30, seed=0, **options):
        check_doc(task, doc)


@pytest.mark.parametrize("task", TASKS)
def test_exemplars_are_correct_and_use_other_entities(task):
    examples = cot_data.exemplars(task)
    assert len(examples) == 4
    for doc in examples:
        check_doc(task, doc)
    words = set(re.findall(r"[A-Za-z]+", " ".join(d["question"] for d in examples)))
    assert not words & set(cot_data.PEOPLE + cot_data.COLORS + cot_data.ITEMS)


# --- lm-eval tasks: prompts, filters, metric --------------------------------------------------------------------

def load_tasks(names, **metadata):
    """Our tasks through lm-eval's TaskManager (our folder only: indexing all of lm-eval's YAMLs takes seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False, metadata=metadata).load(list(names))


@pytest.fixture(scope="module")
def suite():
    return load_tasks(["rh_cot"], cot_docs=3)


def score(task, completions: list[str]) -> list[dict[str, float]]:
    """exact_match per filter of each completion for the task's first document, through lm-eval's own code."""
    task.build_all_requests(limit=1)
    instance = task.instances[0]
    out = []
    for text in completions:
        instance.resps = [text]
        instance.filtered_resps = {}
        task.apply_filters()
        out.append({name: task.process_results(task.test_docs()[0], [resp])["exact_match"]
                    for name, resp in instance.filtered_resps.items()})
    return out


def test_suite_layout(suite):
    assert suite["group_map"]["rh_cot"] == ["rh_cot::cot", "rh_cot::direct"]
    assert suite["group_map"]["rh_cot::cot"] == [f"rh_{t}_cot" for t in TASKS]
    assert suite["group_map"]["rh_cot::direct"] == [f"rh_{t}" for t in TASKS]
    for name, task in suite["tasks"].items():
        assert len(task.test_docs()) == 3
        assert [f["name"] for f in task.config.filter_list] == ["strict-match", "flexible-extract"]
        assert [m["metric"] for m in task.config.metric_list] == ["exact_match"]


@pytest.mark.parametrize("task_name", TASKS)
def test_prompts_and_scoring_on_hand_made_completions(suite, task_name):
    cot_task, direct_task = suite["tasks"][f"rh_{task_name}_cot"], suite["tasks"][f"rh_{task_name}"]
    doc = cot_task.test_docs()[0]
    assert doc == cot_data.generate(task_name, 1, cot.DEFAULT_SEED)[0]
    answer, wrong = doc["answer"], str(int(doc["answer"]) + 1)

    cot_prompt = cot_task.fewshot_context(doc, num_fewshot=4)
    examples = cot_data.exemplars(task_name)
    assert cot_prompt.startswith(f"Q: {examples[0]['question']}\nA: {examples[0]['cot']}\n\nQ: ")
    assert cot_prompt.endswith(f"\n\nQ: {doc['question']}\nA:")
    direct_prompt = direct_task.fewshot_context(doc, num_fewshot=4)
    assert f"A: The answer is {examples[0]['answer']}.\n\nQ: " in direct_prompt
    assert examples[0]["cot"] not in direct_prompt
    assert direct_prompt.endswith(f"\n\nQ: {doc['question']}\nA:")

    chain = doc["cot"].removesuffix(f" The answer is {answer}.")
    results = score(cot_task, [
        f" {doc['cot']}",                                     # right
        f" {chain} The answer is {wrong}.",                    # wrong answer
        f" {chain} So it is {answer}",                         # right number, not in the asked format
        f" The answer is {answer}. Q: next {wrong}",           # format right, junk after it
    ])
    assert results[0] == {"strict-match": 1.0, "flexible-extract": 1.0}
    assert results[1] == {"strict-match": 0.0, "flexible-extract": 0.0}
    assert results[2] == {"strict-match": 0.0, "flexible-extract": 1.0}
    assert results[3] == {"strict-match": 1.0, "flexible-extract": 0.0}
    assert score(direct_task, [f" The answer is {answer}.", f" The answer is {wrong}."]) == [
        {"strict-match": 1.0, "flexible-extract": 1.0}, {"strict-match": 0.0, "flexible-extract": 0.0}]


def test_prompts_render_with_a_chat_template(suite, smollm_dir):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm_dir)

    def chat_template(messages, add_generation_prompt=True):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    task = suite["tasks"]["rh_kvhop_cot"]
    doc = task.test_docs()[0]
    for multiturn in (False, True):
        prompt = task.fewshot_context(doc, num_fewshot=4, apply_chat_template=True,
                                      fewshot_as_multiturn=multiturn, chat_template=chat_template)
        assert prompt.endswith(f"Q: {doc['question']}\nA:<|im_end|>\n<|im_start|>assistant\n")
        assert cot_data.exemplars("kvhop")[3]["cot"] in prompt
    assert "<|im_end|>" in task.config.generation_kwargs["until"]


def test_metadata_sets_size_and_seed():
    tasks = load_tasks(["rh_factsum_cot"], cot_docs=7, cot_seed=5)["tasks"]
    assert list(tasks["rh_factsum_cot"].test_docs()) == cot_data.generate("factsum", 7, 5)


@pytest.mark.parametrize("metadata, message", [
    ({"cot_docs": -3}, "metadata cot_docs must be between 1 and 100000, got -3"),
    ({"cot_docs": "many"}, "metadata cot_docs must be an integer, got 'many'"),
    ({"cot_seed": 1.5}, "metadata cot_seed must be an integer, got 1.5"),
    ({"cot_doc": 5}, "unknown metadata key 'cot_doc'; known cot_* keys: cot_docs, cot_seed"),
    ({"gsm8k_path": "/no/such/gsm8k"}, "metadata gsm8k_path: /no/such/gsm8k is not a file"),
    ({"gsm8k_dir": "/tmp"}, "unknown metadata key 'gsm8k_dir'"),
])
def test_bad_metadata_is_one_clear_line(metadata, message):
    with pytest.raises(RHError) as caught:
        cot.synthetic_dataset("factsum", **metadata) if "cot" in next(iter(metadata)) else cot.gsm8k_dataset(**metadata)
    assert message in str(caught.value) and "\n" not in str(caught.value)


# --- GSM8K ------------------------------------------------------------------------------------------------------

@needs_gsm8k
def test_gsm8k_from_local_jsonl_matches_lm_eval_config():
    loaded = load_tasks(["rh_gsm8k_pair"], gsm8k_path=str(GSM8K_DIR / "test.jsonl"))
    assert loaded["group_map"]["rh_gsm8k_pair"] == ["rh_gsm8k_cot", "rh_gsm8k"]
    for ours, base_file in (("rh_gsm8k_cot", "gsm8k/gsm8k-cot.yaml"), ("rh_gsm8k", "gsm8k/gsm8k.yaml")):
        task, base = loaded["tasks"][ours], cot.lm_eval_base_config(base_file)
        assert len(task.test_docs()) == 1319
        for key in ("doc_to_text", "doc_to_target", "filter_list", "metric_list", "generation_kwargs", "num_fewshot"):
            assert getattr(task.config, key) == base[key], key
    cot_task, direct_task = loaded["tasks"]["rh_gsm8k_cot"], loaded["tasks"]["rh_gsm8k"]
    assert len(direct_task.fewshot_docs()) == 7473  # train.jsonl beside test.jsonl
    doc = cot_task.test_docs()[0]
    assert doc["question"].startswith("Janet") and cot_task.doc_to_target(doc) == "18"
    prompt = cot_task.fewshot_context(doc, num_fewshot=8)
    assert prompt.startswith("Q: There are 15 trees in the grove.") and prompt.endswith(f"Q: {doc['question']}\nA:")
    assert score(cot_task, [" 16 - 3 - 4 = 9, 9 * 2 = 18. The answer is 18."]) == [
        {"strict-match": 1.0, "flexible-extract": 1.0}]


@needs_gsm8k
def test_gsm8k_folder_from_environment(monkeypatch):
    monkeypatch.setenv(cot.GSM8K_ENV, str(GSM8K_DIR))
    dataset = cot.gsm8k_dataset()
    assert (len(dataset["test"]), len(dataset["train"])) == (1319, 7473)


def test_gsm8k_without_train_serves_cot_but_not_direct(tmp_path):
    records = [{"question": f"Tom has {n} cats and buys 2 more. How many cats?", "answer": f"{n} + 2\n#### {n + 2}"}
               for n in range(3)]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    tasks = load_tasks(["rh_gsm8k_cot"], gsm8k_path=str(tmp_path))["tasks"]
    assert [tasks["rh_gsm8k_cot"].doc_to_target(d) for d in tasks["rh_gsm8k_cot"].test_docs()] == ["2", "3", "4"]
    with pytest.raises(RHError, match="few-shot examples from the 'train' split.*put train.jsonl beside test.jsonl"):
        load_tasks(["rh_gsm8k"], gsm8k_path=str(tmp_path))
    (tmp_path / "bad.jsonl").write_text('{"question": "no answer"}\n')
    with pytest.raises(RHError, match=r"bad.jsonl:1: a GSM8K record needs string fields 'question' and 'answer'"):
        cot.gsm8k_dataset(gsm8k_path=str(tmp_path / "bad.jsonl"))


def test_gsm8k_hub_failure_says_what_to_do(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.delenv(cot.GSM8K_ENV, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RHError) as caught:
        cot.gsm8k_dataset()
    assert "cannot load openai/gsm8k" in str(caught.value) and "gsm8k_path" in str(caught.value)
    assert "\n" not in str(caught.value)


# --- the stock lm_eval CLI --------------------------------------------------------------------------------------

def lm_eval_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_cli("lm_eval", *args, env={cot.GSM8K_ENV: ""}, timeout=timeout)


@pytest.mark.slow
def test_stock_cli_runs_the_suite_end_to_end(tiny_llama_dir, tmp_path):
    result = lm_eval_cli("--model", "hf", "--model_args", f"pretrained={tiny_llama_dir},dtype=float32",
                         "--tasks", "rh_cot", "--limit", "2", "--batch_size", "2", "--output_path", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(next(tmp_path.rglob("results_*.json")).read_text())["results"]
    for name in [f"rh_{t}{form}" for t in TASKS for form in ("_cot", "")] + ["rh_cot::cot", "rh_cot::direct"]:
        for key in ("exact_match,strict-match", "exact_match,flexible-extract"):
            assert 0.0 <= results[name][key] <= 1.0, (name, key)


@pytest.mark.slow
def test_stock_cli_bad_metadata_is_one_line(tiny_llama_dir):
    result = lm_eval_cli("--model", "hf", "--model_args", f"pretrained={tiny_llama_dir}", "--tasks", "rh_kvhop",
                         "--metadata", '{"cot_docs": 0}', timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("rh-eval: error:")]
    assert errors == ["rh-eval: error: metadata cot_docs must be between 1 and 100000, got 0"], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


# --- SmolLM2-135M: chain of thought lifts it off the floor -----------------------------------------------------

@pytest.mark.smollm
def test_smollm2_chain_of_thought_is_above_floor(smollm_dir):
    import lm_eval
    from lm_eval.tasks import TaskManager

    # factsum, the pair where the 135M model's CoT clears its direct form (docs/cot.md); with the chat template
    # the first 16 documents score 7/16 CoT vs 0/16 direct
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={smollm_dir},dtype=float32",
                                  tasks=["rh_factsum_cot", "rh_factsum"], limit=16, batch_size=8, device="cpu",
                                  apply_chat_template=True, task_manager=TaskManager(include_defaults=False))
    cot_score = out["results"]["rh_factsum_cot"]["exact_match,strict-match"]
    direct_score = out["results"]["rh_factsum"]["exact_match,strict-match"]
    assert cot_score >= 0.25 and cot_score >= direct_score + 0.2, (cot_score, direct_score)
