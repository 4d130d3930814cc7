"""NIAH grid generation: token lengths, depths at sentence boundaries, needles present once, shared hay, errors."""

from __future__ import annotations

import pytest

from rh_models.errors import RHError
from rh_models.zoo import resolve_pretrained
from rh_tasks.haystack import (
    NOISE_SENTENCES,
    TokenizedHaystack,
    load_haystack,
    pg_essays_dir,
)
from rh_tasks.needles import PAPER_FACTS
from rh_tasks.niah_docs import build_docs, load_tokenizer, render_chat

LENGTHS = [600, 1200]
DEPTHS = [0, 25, 50, 75, 100]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_pretrained("smollm2-135m"))


@pytest.fixture(scope="module")
def paper_docs(tokenizer):
    return build_docs(tokenizer, LENGTHS, DEPTHS, needles="paper", haystack="pg_essays", max_length=2048)


def _ends_sentence_before(prompt: str, start: int) -> bool:
    before = prompt[:start].rstrip()
    return before.endswith(("<document>", ".", "!", "?", '"', "'", ")", "\u201d", "\u2019"))


def test_grid_shape_and_contract_fields(paper_docs):
    assert len(paper_docs) == len(LENGTHS) * len(DEPTHS) * len(PAPER_FACTS)
    assert {(d["length"], d["depth"]) for d in paper_docs} == {(n, p) for n in LENGTHS for p in DEPTHS}
    for doc in paper_docs:
        assert doc["cell"] == f"{doc['length']}-{doc['depth']}"
        assert doc["rh_needles"] and doc["rh_answers"]
        assert doc["prompt"][doc["needle_start"]:doc["needle_end"]] == doc["rh_needles"][0]
        assert doc["rh_answers"][0] in doc["rh_needles"][0]
        for needle in doc["rh_needles"]:
            assert doc["prompt"].count(needle) == 1
        assert doc["prompt"] == doc["input"] + doc["gen_prefix"] and doc["input"].endswith("?\n")
        assert doc["needle_id"] in {fact.needle_id for fact in PAPER_FACTS}


def test_prompts_have_requested_token_length(paper_docs, tokenizer):
    for doc in paper_docs:
        measured = len(tokenizer(doc["prompt"], add_special_tokens=False)["input_ids"])
        assert measured == doc["n_tokens"]
        assert abs(measured - doc["length"]) <= 5, (doc["cell"], measured)


def test_needle_sits_at_requested_depth_on_a_sentence_boundary(paper_docs, tokenizer):
    for doc in paper_docs:
        assert _ends_sentence_before(doc["prompt"], doc["needle_start"]), doc["prompt"][doc["needle_start"] - 40:]
        assert doc["depth_actual"] <= doc["depth"] + 1e-9
        # moved back by at most a sentence or two (PG essays have long ones), never to somewhere else entirely
        assert doc["depth"] - doc["depth_actual"] <= 15, doc["cell"]
        # measure independently: share of the document's tokens in front of the needle
        context_start = doc["prompt"].index("<document>\n") + len("<document>\n")
        context_end = doc["prompt"].index("\n</document>")
        before = len(tokenizer(doc["prompt"][context_start:doc["needle_start"]], add_special_tokens=False)["input_ids"])
        total = len(tokenizer(doc["prompt"][context_start:context_end], add_special_tokens=False)["input_ids"])
        assert abs(100 * before / total - doc["depth_actual"]) <= 5, doc["cell"]
    depth0 = [d for d in paper_docs if d["depth"] == 0]
    assert all(d["prompt"][: d["needle_start"]].endswith("<document>\n") for d in depth0)


def test_cells_of_a_length_share_the_hay_before_the_needle(paper_docs):
    by_series: dict[tuple[int, str], list[dict]] = {}
    for doc in paper_docs:
        by_series.setdefault((doc["length"], doc["needle_id"]), []).append(doc)
    for docs in by_series.values():
        docs.sort(key=lambda d: d["depth"])
        for shallow, deep in zip(docs, docs[1:]):
            shared = shallow["prompt"][: max(shallow["needle_start"] - 1, 0)]
            assert deep["prompt"].startswith(shared)
    # and across lengths: the shorter hay is a prefix of the longer one
    short = next(d for d in paper_docs if d["length"] == 600 and d["depth"] == 100)
    long = next(d for d in paper_docs if d["length"] == 1200 and d["depth"] == 100 and d["needle_id"] == short["needle_id"])
    assert long["prompt"].startswith(short["prompt"][: short["needle_start"] - 1])


def test_needle_survives_left_truncation(tokenizer):
    """HFLM keeps the last max_length - max_gen_toks tokens; the whole prompt, chat or not, must be inside."""
    max_length, max_gen = 1300, 32
    docs = build_docs(tokenizer, [1200], [0, 100], needles="paper", samples=1, max_length=max_length,
                      max_gen_toks=max_gen)
    for doc in docs:
        for prompt in (doc["prompt"], render_chat(tokenizer, doc["input"], doc["gen_prefix"])):
            ids = tokenizer(prompt)["input_ids"]
            assert len(ids) <= max_length - max_gen
            kept = tokenizer.decode(ids[-(max_length - max_gen):])
            assert doc["rh_needles"][0] in kept


def test_chat_template_docs(tokenizer):
    docs = build_docs(tokenizer, [800], [50], needles="paper", samples=1, chat_template=True, max_length=2048)
    doc = docs[0]
    assert doc["prompt"].startswith("<|im_start|>") and doc["prompt"].endswith(doc["gen_prefix"])
    assert doc["prompt"][doc["needle_start"]:doc["needle_end"]] == doc["rh_needles"][0]
    assert abs(doc["n_tokens"] - 800) <= 5


@pytest.mark.parametrize("kind,asked,distractors", [("kv", 1, 0), ("multikey", 1, 3), ("multivalue", 4, 0),
                                                    ("multiquery", 4, 0)])
def test_kv_variants(tokenizer, kind, asked, distractors):
    docs = build_docs(tokenizer, [700], [0, 50], needles=kind, samples=2, max_length=2048)
    assert len(docs) == 4
    for doc in docs:
        assert len(doc["rh_needles"]) == asked and len(doc["rh_answers"]) == asked
        assert len(doc["distractors"]) == distractors
        for needle, answer in zip(doc["rh_needles"], doc["rh_answers"]):
            assert answer in needle and doc["prompt"].count(needle) == 1
        for needle in doc["distractors"]:
            assert doc["prompt"].count(needle) == 1
        assert [doc["prompt"][a:b] for a, b in doc["needle_spans"]] == doc["rh_needles"]
        assert doc["rh_metric"] == "string_match" and abs(doc["n_tokens"] - 700) <= 5
    # seeded: the same seed repeats the values, another seed changes them
    again = build_docs(tokenizer, [700], [0, 50], needles=kind, samples=2, max_length=2048)
    other = build_docs(tokenizer, [700], [0, 50], needles=kind, samples=2, max_length=2048, seed=1)
    assert [d["rh_answers"] for d in again] == [d["rh_answers"] for d in docs]
    assert [d["rh_answers"] for d in other] != [d["rh_answers"] for d in docs]


def test_haystacks_load_offline(tokenizer, tmp_path):
    essays = load_haystack("pg_essays")
    assert len(essays) > 100_000 and len(list(pg_essays_dir().glob("*.txt"))) > 10
    assert load_haystack("noise", min_chars=5000).startswith(NOISE_SENTENCES[0]) and len(load_haystack("noise", 5000)) >= 5000
    lines = load_haystack("needles", min_chars=3000).splitlines()
    assert len(lines) > 20 and all(line.startswith("The special magic number for ") for line in lines)
    (tmp_path / "a.txt").write_text("First file. It has two sentences.")
    (tmp_path / "b.txt").write_text("Second file!")
    assert load_haystack(str(tmp_path)) == "First file. It has two sentences.\n\nSecond file!"
    data = tmp_path / "dataset"
    data.mkdir()
    (data / "train.jsonl").write_text('{"body": "Row one."}\n{"body": "Row two."}\n')
    assert load_haystack(str(data), field="body") == "Row one.\n\nRow two."  # via datasets.load_dataset
    with pytest.raises(RHError, match="no column 'text'"):
        load_haystack(str(data))
    hay = TokenizedHaystack("One two. Three four! Five", tokenizer)
    boundary = hay.boundary_at_or_before(len(hay))
    assert hay.text[: hay.char_end(boundary)] == "One two. Three four!"


def test_needles_haystack_and_folder_haystack_build(tokenizer, tmp_path):
    docs = build_docs(tokenizer, [600], [50], needles="kv", haystack="needles", samples=1, max_length=2048)
    doc = docs[0]
    assert doc["prompt"].count(doc["rh_needles"][0]) == 1
    assert doc["prompt"][doc["needle_start"] - 1] == "\n"  # its own line among the distractor lines
    (tmp_path / "story.txt").write_text(" ".join(f"Sentence number {i} is here." for i in range(400)))
    docs = build_docs(tokenizer, [500], [50], needles="paper", haystack=str(tmp_path), samples=1, max_length=2048)
    assert "Sentence number 1 is here." in docs[0]["prompt"]


@pytest.mark.parametrize("kwargs,message", [
    (dict(lengths=[-5]), "must be positive"),
    (dict(lengths=[1000], depths=[0, 101]), "within 0..100"),
    (dict(lengths=[5000]), "does not fit"),
    (dict(lengths=[30]), "too short"),
    (dict(lengths=[1000], needles="haystacks"), "unknown needles"),
    (dict(lengths=[1000], haystack="/no/such/folder"), "not one of"),
    (dict(lengths=[1000], samples=4), "samples must be 1..3"),
])
def test_bad_grid_raises_one_clear_line(tokenizer, kwargs, message):
    with pytest.raises(RHError) as info:
        build_docs(tokenizer, **{"max_length": 2048, **kwargs})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_default_lengths_are_capped_by_the_model(tokenizer):
    docs = build_docs(tokenizer, depths=[50], needles="paper", samples=1, max_length=2100)
    assert sorted({d["length"] for d in docs}) == [1000, 2000]


def test_answer_prefix_options(tokenizer):
    none = build_docs(tokenizer, [600], [50], samples=1, max_length=2048, answer_prefix=False)[0]
    assert none["gen_prefix"] == "" and none["prompt"] == none["input"]
    fixed = build_docs(tokenizer, [600], [50], samples=1, max_length=2048, answer_prefix="Answer:")[0]
    assert fixed["gen_prefix"] == "Answer:" and fixed["prompt"].endswith("?\nAnswer:")
    assert abs(none["n_tokens"] - 600) <= 5 and abs(fixed["n_tokens"] - 600) <= 5
