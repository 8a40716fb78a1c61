"""Probe responses: what else than y+ and y- is scored under each example's prompt.

Ren & Sutherland ("Learning Dynamics of LLM Finetuning", arXiv 2407.10490) track a fixed set of
probe responses through training to see where the probability mass that y- loses goes. The
text probes of one example (all built offline and deterministically from ``seed``):

* ``irr_train``: y+ of another problem of the training split;
* ``irr_test``: y+ of another problem of the scored split;
* ``permuted``: y+ with its words shuffled (same words, no order);
* ``permuted_irr``: ``irr_test`` with its words shuffled;
* ``self_greedy``: the starting model's own greedy response (``fwdrev.probe_scoring``);
* user columns (``--probe_fields``): any other response column of the data file.

"Another problem" is another problem key (``fwdrev.problems.problem_keys``: problem_id, else
the forward question), so a problem's original and flipped rows never serve as each other's
irrelevant response. The ``argmax`` probes come from the y+ / y- forward itself
(``fwdrev.token_dynamics``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from fwdrev.data import IM_END, split_embedded, strip_after_final_im_end
from fwdrev.errors import UsageError
from fwdrev.problems import problem_keys
from fwdrev.tokenization import TokenizedPair, encode_response, truncate_response

TEXT_PROBES = ("irr_train", "irr_test", "permuted", "permuted_irr", "self_greedy")
PROBE_KINDS = (*TEXT_PROBES, "argmax")
SCORED_RESPONSES = {"chosen": "y+", "rejected": "y-"}  # y+ / y- rows of probes.parquet


@dataclass(frozen=True)
class ProbeResponse:
    example_id: int
    probe: str
    text: str
    source_example_id: int | None = None  # the row an irr_* response comes from


@dataclass(frozen=True)
class TrainRows:
    """The training split's y+ responses and problem keys (for ``irr_train``)."""

    responses: dict[int, str]
    keys: dict[int, frozenset[str]]  # fwdrev.problems.problem_keys
    source: str  # where they come from, for messages


def parse_probe_kinds(value: str | None) -> list[str]:
    """'irr_test,argmax' -> those kinds in ``PROBE_KINDS`` order; 'all' -> all; None/'' -> none."""
    if not value:
        return []
    names = [v.strip() for v in value.split(",") if v.strip()]
    if names == ["all"]:
        return list(PROBE_KINDS)
    unknown = sorted(set(names) - set(PROBE_KINDS))
    if unknown:
        raise UsageError(f"--probes: unknown probe(s) {unknown}; choose from {list(PROBE_KINDS)} or 'all'")
    return [kind for kind in PROBE_KINDS if kind in names]


def example_rng(seed: int, example_id: int, purpose: str) -> np.random.Generator:
    """One generator per (seed, example, purpose): a probe never depends on which others are built."""
    return np.random.default_rng([seed, int(example_id), zlib.crc32(purpose.encode())])


def permute_words(text: str, rng: np.random.Generator) -> str:
    """The words of ``text`` (split at white space) in a random order; a final <|im_end|> stays last."""
    ending = IM_END if text.endswith(IM_END) else ""
    words = text[: len(text) - len(ending)].split()
    order = rng.permutation(len(words))
    return " ".join(words[i] for i in order) + ending


def pick_other_problem(example_id: int, keys: frozenset[str], candidates: list[int],
                       candidate_keys: dict[int, frozenset[str]], rng: np.random.Generator) -> int:
    """A candidate row of another problem: one that shares none of ``keys`` (``fwdrev.problems``)."""
    others = [c for c in candidates if candidate_keys[c].isdisjoint(keys) and c != example_id]
    if not others:
        raise UsageError(f"no row of another problem to serve as the irrelevant response of example "
                         f"{example_id}: the data holds one problem only")
    return int(others[rng.integers(len(others))])


def scored_problem_keys(data) -> dict[int, frozenset[str]]:
    return problem_keys(data, [e.example_id for e in data.examples])


def field_response(value) -> str | None:
    """A user probe column's response: the text after the last assistant header of a whole
    conversation (as the embedded data shape), else the value as it is; None when empty."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or not str(value).strip():
        return None
    parts = split_embedded(str(value))
    return strip_after_final_im_end(parts[1]) if parts else str(value)


def probe_responses(data, kinds: list[str], seed: int, probe_fields: list[str] = (),
                    train: TrainRows | None = None, greedy: dict[int, str] | None = None
                    ) -> tuple[list[ProbeResponse], dict[str, list[int]]]:
    """The text probes of every example of ``data`` (a ``PreferenceData``), in example order, and
    per user column the rows left without that probe (empty cells)."""
    keys = scored_problem_keys(data)
    chosen = {e.example_id: e.chosen for e in data.examples}
    test_ids = list(chosen)
    missing_fields = [f for f in probe_fields if f not in data.frame.columns]
    if missing_fields:
        raise UsageError(f"--probe_fields {missing_fields}: not columns of the data file; available: "
                         f"{list(data.frame.columns)}")
    clashes = sorted(set(probe_fields) & (set(PROBE_KINDS) | set(SCORED_RESPONSES.values())))
    if clashes:
        raise UsageError(f"--probe_fields {clashes}: names of built-in probes; rename those columns")
    if "irr_train" in kinds and train is None:
        raise UsageError("--probes irr_train needs the training split: pass --probe_train_file, or score "
                         "checkpoints whose run_config.json records their training data")
    responses, empty = [], {field: [] for field in probe_fields}
    for example_id in test_ids:
        irr_test = None
        if {"irr_test", "permuted_irr"} & set(kinds):
            irr_test = pick_other_problem(example_id, keys[example_id], test_ids, keys,
                                          example_rng(seed, example_id, "irr_test"))
        for kind in kinds:
            if kind == "irr_train":
                source = pick_other_problem(-1, keys[example_id], sorted(train.responses), train.keys,
                                            example_rng(seed, example_id, "irr_train"))
                responses.append(ProbeResponse(example_id, kind, train.responses[source], source))
            elif kind == "irr_test":
                responses.append(ProbeResponse(example_id, kind, chosen[irr_test], irr_test))
            elif kind == "permuted":
                text = permute_words(chosen[example_id], example_rng(seed, example_id, "permuted"))
                responses.append(ProbeResponse(example_id, kind, text))
            elif kind == "permuted_irr":
                text = permute_words(chosen[irr_test], example_rng(seed, example_id, "permuted_irr"))
                responses.append(ProbeResponse(example_id, kind, text, irr_test))
            elif kind == "self_greedy" and greedy is not None:
                responses.append(ProbeResponse(example_id, kind, greedy[example_id]))
        for field in probe_fields:
            text = field_response(data.frame.loc[example_id, field])
            if text is None:
                empty[field].append(example_id)
            else:
                responses.append(ProbeResponse(example_id, field, text))
    return responses, empty


def probe_pairs(tokenizer, data, pairs: list[TokenizedPair], responses: list[ProbeResponse],
                max_length: int) -> tuple[list[TokenizedPair], list[list[ProbeResponse]]]:
    """The probe responses as ``TokenizedPair`` s for ``fwdrev.scoring.score_pairs``: two responses
    of one example per pair (chosen and rejected slot; an odd one out with an empty partner),
    under the example's own prompt ids, cut to the same ``max_length`` as y+ / y-. Returns the
    pairs and, per pair, its responses (the chosen slot's, then the rejected slot's if any)."""
    by_id = {pair.example_id: pair for pair in pairs}
    shapes = {e.example_id: e.shape for e in data.examples}
    grouped: dict[int, list[ProbeResponse]] = {}
    for response in responses:
        if response.example_id in by_id:
            grouped.setdefault(response.example_id, []).append(response)
    out_pairs, slots = [], []
    for example_id, items in grouped.items():
        prompt_ids = by_id[example_id].prompt_ids
        budget = max_length - len(prompt_ids)
        ids = [truncate_response(encode_response(tokenizer, r.text, shapes[example_id] == "plain"), budget)[0]
               for r in items]
        for start in range(0, len(items), 2):
            second = ids[start + 1] if start + 1 < len(items) else []
            out_pairs.append(TokenizedPair(example_id, prompt_ids, ids[start], second))
            slots.append(items[start : start + 2])
    return out_pairs, slots
