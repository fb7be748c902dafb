"""Model-card reading: front matter, templated cards, and what a card declares."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard, ModelCardData

from leaderboard.catalog.cards import (
    CardError,
    declared_datasets,
    declared_parents,
    declared_relation,
    parse_card,
    relation_for_model_type,
)
from tests.builders import CARD_BODY, card_text, default_card


def test_realistic_card_is_parsed():
    meta = default_card("org/model", base_model="base/model", datasets=["data/one"])

    parsed = parse_card(card_text(meta, name="org/model"))

    assert parsed.metadata == meta
    assert parsed.has_front_matter is True
    assert parsed.body == CARD_BODY.format(name="org/model", kind="causal")
    assert parsed.looks_templated is False


def test_card_without_front_matter():
    parsed = parse_card("# A model\n\nSome words.\n")
    assert (parsed.metadata, parsed.has_front_matter) == ({}, False)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("---\nlicense: [mit\n---\nbody", "while parsing a flow sequence"),
        ("---\n- a\n- b\n---\nbody", "repo card metadata block should be a dict"),
        ("---\njust words\n---\nbody", "repo card metadata block should be a dict"),
        (
            "---\nlicense: mit\nno closing line\n",
            "front matter opened with '---' is never closed by a '---' line",
        ),
    ],
)
def test_unparseable_front_matter(text, message):
    with pytest.raises(CardError) as excinfo:
        parse_card(text)
    assert str(excinfo.value) == message


def test_byte_order_mark_does_not_hide_the_front_matter():
    parsed = parse_card("\ufeff---\nlicense: mit\n---\n# body\n")
    assert (parsed.metadata, parsed.has_front_matter) == ({"license": "mit"}, True)


def test_windows_line_endings():
    assert parse_card("---\r\nlicense: mit\r\n---\r\nbody").metadata == {"license": "mit"}


def test_a_rule_in_the_body_is_not_front_matter():
    parsed = parse_card("# Title\n\n---\n\nbody\n")
    assert (parsed.metadata, parsed.has_front_matter) == ({}, False)


def test_metadata_is_json_safe():
    parsed = parse_card("---\nlicense: mit\nreleased: 2024-06-01\nscore: .nan\n---\nbody")
    assert parsed.metadata == {"license": "mit", "released": "2024-06-01", "score": "nan"}
    assert json.loads(json.dumps(parsed.metadata)) == parsed.metadata


def test_hub_template_card_looks_templated():
    template = str(ModelCard.from_template(ModelCardData(license="mit")))
    assert parse_card(template).looks_templated is True


def test_short_card_looks_templated():
    assert parse_card("---\nlicense: mit\n---\n# My model\n\nA model.\n").looks_templated is True


@pytest.mark.parametrize(
    ("value", "parents"),
    [
        (None, []),
        ("org/base", ["org/base"]),
        ("  org/base  ", ["org/base"]),
        ("", []),
        (["org/a", "org/b", "org/a", " "], ["org/a", "org/b"]),
        ({"org/a": 1}, []),
        (["org/a", {"nested": "x"}, ["org/b"]], ["org/a"]),
    ],
)
def test_declared_parents(value, parents):
    assert declared_parents({"base_model": value}) == parents


def test_declared_datasets():
    assert declared_datasets({"datasets": ["d/a", "d/b", "d/a"]}) == ["d/a", "d/b"]
    assert declared_datasets({"datasets": "d/a"}) == ["d/a"]
    assert declared_datasets({}) == []


@pytest.mark.parametrize(
    ("metadata", "relation"),
    [
        ({}, "fine-tune"),
        ({"base_model_relation": "finetune"}, "fine-tune"),
        ({"base_model_relation": "Merge"}, "merge"),
        ({"base_model_relation": "adapter"}, "adapter"),
        ({"base_model_relation": "quantized"}, "quantized"),
        ({"base_model_relation": "something-else"}, "fine-tune"),
        ({"tags": ["mergekit"]}, "merge"),
        ({"tags": "merge"}, "merge"),
        ({"tags": ["merge"], "base_model_relation": "quantized"}, "quantized"),
    ],
)
def test_declared_relation(metadata, relation):
    assert declared_relation(metadata) == relation


@pytest.mark.parametrize(
    ("model_type", "relation"),
    [
        ("merge", "merge"),
        ("adapter", "adapter"),
        ("quantized", "quantized"),
        ("fine-tuned", "fine-tune"),
        ("chat", "fine-tune"),
        ("continued-pretraining", "fine-tune"),
    ],
)
def test_relation_for_model_type(model_type, relation):
    assert relation_for_model_type(model_type) == relation
