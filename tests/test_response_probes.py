"""Probe responses are what docs/probes.md says: irr_* from another problem, permuted = y+'s words
reordered, user columns as given; deterministic for a seed; bad flags exit 2."""

from collections import Counter

import numpy as np
import pytest

from fwdrev.cli import UsageError
from fwdrev.data import IM_END, load_preference_data
from fwdrev.devtools.synthetic import generate_preference_rows
from fwdrev.modeling import load_tokenizer
from fwdrev.response_probes import (
    TrainRows,
    parse_probe_kinds,
    permute_words,
    probe_pairs,
    probe_responses,
    scored_problem_keys,
)
from fwdrev.tokenization import encode_examples


@pytest.fixture(scope="module")
def loaded(tiny_model_dir, tmp_path_factory):
    frame = generate_preference_rows(12, seed=3)
    frame["rephrase"] = [None if i % 4 == 0 else f"rephrased answer {i}" for i in range(len(frame))]
    path = tmp_path_factory.mktemp("probe-data") / "rows.parquet"
    frame.to_parquet(path)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    return load_preference_data(path, tokenizer=tokenizer), tokenizer


def train_rows(data) -> TrainRows:
    """The scored rows' own y+ as a stand-in training split, under shifted problem keys."""
    keys = scored_problem_keys(data)
    return TrainRows({e.example_id + 100: e.chosen for e in data.examples},
                     {e.example_id + 100: keys[e.example_id] for e in data.examples}, "test")


def words(text: str) -> Counter:
    return Counter(text.replace(IM_END, "").split())


def by_kind(responses, kind):
    return {r.example_id: r for r in responses if r.probe == kind}


def test_irrelevant_responses_come_from_another_problem(loaded):
    data, _ = loaded
    keys = scored_problem_keys(data)
    train = train_rows(data)
    responses, _ = probe_responses(data, ["irr_train", "irr_test", "permuted_irr"], seed=0, train=train)
    chosen = {e.example_id: e.chosen for e in data.examples}
    for example_id in chosen:
        irr_test = by_kind(responses, "irr_test")[example_id]
        assert keys[irr_test.source_example_id].isdisjoint(keys[example_id])  # never the flipped twin
        assert irr_test.text == chosen[irr_test.source_example_id]
        irr_train = by_kind(responses, "irr_train")[example_id]
        assert train.keys[irr_train.source_example_id].isdisjoint(keys[example_id])
        assert irr_train.text == train.responses[irr_train.source_example_id]
        shuffled = by_kind(responses, "permuted_irr")[example_id]
        assert shuffled.source_example_id == irr_test.source_example_id
        assert words(shuffled.text) == words(irr_test.text)
    assert len({r.source_example_id for r in by_kind(responses, "irr_test").values()}) > 1  # not one fixed row


def test_permuted_is_a_permutation_of_the_words_of_y_plus(loaded):
    data, _ = loaded
    responses, _ = probe_responses(data, ["permuted"], seed=0)
    for example in data.examples:
        permuted = by_kind(responses, "permuted")[example.example_id].text
        assert words(permuted) == words(example.chosen)
        assert permuted.endswith(IM_END) == example.chosen.endswith(IM_END)
        assert permuted != example.chosen


def test_probes_are_deterministic_per_seed(loaded):
    data, _ = loaded
    kinds = ["irr_test", "permuted"]
    first, _ = probe_responses(data, kinds, seed=0)
    assert first == probe_responses(data, kinds, seed=0)[0]
    assert first != probe_responses(data, kinds, seed=1)[0]
    rng = np.random.default_rng(0)
    assert sorted(permute_words("a b c d", rng).split()) == ["a", "b", "c", "d"]


def test_user_columns_and_their_empty_cells(loaded):
    data, _ = loaded
    responses, empty = probe_responses(data, [], seed=0, probe_fields=["rephrase"])
    assert empty == {"rephrase": [0, 4, 8]}
    assert by_kind(responses, "rephrase")[1].text == "rephrased answer 1"
    with pytest.raises(UsageError, match="not columns of the data file"):
        probe_responses(data, [], seed=0, probe_fields=["nope"])


def test_irr_train_without_a_training_split_names_the_flag(loaded):
    with pytest.raises(UsageError, match="--probe_train_file"):
        probe_responses(loaded[0], ["irr_train"], seed=0)


def test_probe_kinds():
    assert parse_probe_kinds("all") == ["irr_train", "irr_test", "permuted", "permuted_irr", "self_greedy",
                                        "argmax"]
    assert parse_probe_kinds("argmax,irr_test") == ["irr_test", "argmax"]
    assert parse_probe_kinds(None) == []
    with pytest.raises(UsageError, match="unknown probe"):
        parse_probe_kinds("irr_test,bogus")


def test_probe_pairs_share_the_prompt_and_length_budget(loaded):
    data, tokenizer = loaded
    pairs = encode_examples(tokenizer, data.examples, max_length=200, max_prompt_length=100)
    responses, _ = probe_responses(data, ["irr_test", "permuted", "permuted_irr"], seed=0)
    extra, slots = probe_pairs(tokenizer, data, pairs[:2], responses, max_length=200)
    assert [len(s) for s in slots] == [2, 1, 2, 1]  # three probes each: a pair and an odd one out
    prompts = {p.example_id: p.prompt_ids for p in pairs}
    for pair, items in zip(extra, slots):
        assert pair.prompt_ids == prompts[pair.example_id]
        assert {r.example_id for r in items} == {pair.example_id}
        assert len(pair.prompt_ids) + len(pair.chosen_ids) <= 200
    assert extra[1].rejected_ids == []
