"""The shipped symptom corpus, its knowledge base, and the reading of query files."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from text_pipeline.corpus import (
    OOD_QUERIES,
    OOD_TRAINING_TEXTS,
    STYLES,
    Query,
    leaking_texts,
    read_corpus,
    read_knowledge_base,
    read_queries,
)
from text_pipeline.organs import ORGANS


@pytest.fixture(scope="module")
def corpus():
    return read_corpus()


BODY_SYSTEMS = {  # the out-of-domain training texts' regions, by body system (text_pipeline/data/README.md)
    "musculoskeletal": {"back", "neck", "shoulder", "elbow", "hand and wrist", "hip", "knee", "leg", "foot and ankle"},
    "neurological": {"nervous system", "head"},
    "skin": {"skin", "hair and nails"},
    "chest": {"respiratory", "heart and blood vessels", "chest wall"},
    "ear-nose-throat": {"ear", "nose", "throat"},
    "psychiatric": {"mental health"},
    "gynaecological": {"gynaecological", "breast"},
    "eye": {"eye"},
}


def test_no_text_names_an_organ(corpus):
    assert leaking_texts(corpus) == []
    assert leaking_texts(read_queries(OOD_QUERIES)) == []
    assert leaking_texts(read_queries(OOD_TRAINING_TEXTS)) == []


def test_at_least_400_texts_per_organ_split_80_20(corpus):
    per_organ = Counter(query.meta["organ"] for query in corpus)
    assert set(per_organ) == set(ORGANS) and min(per_organ.values()) >= 400
    assert len(corpus) >= 2800
    for organ in ORGANS:
        splits = Counter(query.meta["split"] for query in corpus if query.meta["organ"] == organ)
        assert splits["test"] / (splits["train"] + splits["test"]) == pytest.approx(0.2, abs=0.01)
    assert {q.meta["id"] for q in read_corpus("train")}.isdisjoint(q.meta["id"] for q in read_corpus("test"))


def test_every_text_has_provenance_in_the_knowledge_base(corpus):
    passages = read_knowledge_base()
    for query in corpus:
        passage = passages[query.meta["kb_id"]]
        assert passage["organ"] == query.meta["organ"] and passage["text"].strip()
    assert len({query.meta["id"] for query in corpus}) == len(corpus)


def test_test_split_carries_multi_organ_labels_primary_first():
    test = read_corpus("test")
    assert all(query.organs and query.primary == query.organs[0] for query in test)
    assert sum(len(query.organs) > 1 for query in test) >= 0.2 * len(test)  # shared symptoms are common
    assert {query.primary for query in test} == set(ORGANS)


def test_every_text_has_multi_organ_labels_and_many_share_organs(corpus):
    assert all(query.organs and query.primary == query.organs[0] for query in corpus)
    assert all(query.meta["organ"] in query.organs for query in corpus)  # the source organ is always considered
    assert sum(len(query.organs) > 1 for query in corpus) >= 0.35 * len(corpus)


def test_at_least_400_out_of_domain_training_texts_across_body_systems():
    texts = read_queries(OOD_TRAINING_TEXTS)
    assert len(texts) >= 400 and all(query.is_out_of_domain for query in texts)
    regions = Counter(query.meta["region"] for query in texts)
    for system, members in BODY_SYSTEMS.items():
        assert sum(regions[region] for region in members) >= 25, system
    held_out = {" ".join(query.text.lower().split()) for query in read_queries(OOD_QUERIES)}
    assert held_out.isdisjoint(" ".join(query.text.lower().split()) for query in texts)


def test_texts_vary_like_real_queries(corpus):
    styles = Counter(query.meta["style"] for query in corpus)
    assert set(styles) == set(STYLES) and min(styles.values()) >= 0.05 * len(corpus)
    words = [len(query.text.split()) for query in corpus]
    assert sum(n <= 6 for n in words) >= 0.1 * len(corpus)
    assert sum(n >= 35 for n in words) >= 0.03 * len(corpus)
    normalised = Counter(" ".join(query.text.lower().split()) for query in corpus)
    assert normalised.most_common(1)[0][1] == 1


def test_out_of_domain_queries_have_no_organs():
    ood = read_queries(OOD_QUERIES)
    assert len(ood) >= 30 and all(query.is_out_of_domain for query in ood)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"text": "yellow eyes", "organs": ["liver"]}\n{"text": "dark urine", "organs": [\n', ":2: not valid JSON"),
        (b'{"text": "yellow eyes", "organs": ["liver"]}\n{"text": "caf\xe9", "organs": []}\n', ":2: not UTF-8"),
        (b'\n{"text": "pain", "organs": ["colon"]}\n', ":2: unknown organ(s) 'colon'"),
        (b'{"text": "   ", "organs": ["liver"]}\n', ":1: 'text' is missing or empty"),
        (b'{"text": "pain", "organs": ["liver"], "primary": "spleen"}\n', ":1: primary 'spleen' is not among"),
        (b"[1, 2]\n", ":1: expected a JSON object"),
        (b"\n\n", "holds no queries"),
    ],
)
def test_bad_query_files_are_named_with_their_line(tmp_path, content, message):
    path = tmp_path / "queries.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError) as caught:
        read_queries(path)
    assert str(caught.value).startswith(str(path)) and message in str(caught.value)


def test_query_file_round_trip(tmp_path):
    path = tmp_path / "queries.jsonl"
    rows = [
        {"text": "dark urine and yellow eyes", "organs": ["liver", "gallbladder"]},
        {"text": "knee pain", "organs": []},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    first, second = read_queries(path)
    assert first.primary == "liver" and first.organs == ("liver", "gallbladder") and not first.is_out_of_domain
    assert second.is_out_of_domain and second.primary is None


@pytest.mark.parametrize(
    "text, organ",
    [
        ("fatty liver on ultrasound", "liver"),
        ("acute hepatitis", "liver"),
        ("kidney stones", "kidney"),
        ("renal colic", "kidney"),
        ("nephrotic range proteinuria", "kidney"),
        ("pancreatitis", "pancreas"),
        ("gallbladder wall thickening", "gallbladder"),
        ("biliary colic", "gallbladder"),
        ("cholecystitis", "gallbladder"),
        ("choledocholithiasis on MRCP", "gallbladder"),
        ("ascending cholangitis", "gallbladder"),
        ("splenomegaly", "spleen"),
        ("spleen tip palpable", "spleen"),
        ("stomach ache", "stomach"),
        ("gastritis", "stomach"),
        ("adrenal incidentaloma", "adrenal_gland"),
    ],
)
def test_the_leak_check_catches_every_organ_name_and_stem(text, organ):
    assert organ in leaking_texts([Query(text=text)])[0][1]


@pytest.mark.parametrize("text", ["raised plasma metanephrines", "epigastric pain", "bile-stained vomit"])
def test_the_leak_check_allows_words_that_only_contain_a_stem(text):
    assert leaking_texts([Query(text=text)]) == []
