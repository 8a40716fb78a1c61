"""Which problem a row belongs to: the one definition used by splits, CIs and the overlap check.

A problem has a forward question and a reverse question, and its data has an ``original`` row
(forward question) and a ``flipped`` row (reverse question) that share the two reasoning traces
with their roles swapped. A row gets every key it can be recognised by (``row_keys``):

* ``problem_id:<id>``, numbers compared as numbers (3, 3.0 and "3" are one problem);
* ``forward:<digest>``, the forward question with white space collapsed: the ``question`` column,
  or the user turn of an ``original`` row's embedded prompt;
* ``reverse:<digest>``, the reverse question: the ``relevant-question`` column, or the user turn
  of a ``flipped`` row's embedded prompt;
* ``response:<digest>``, each embedded response (a whole reasoning trace): links the original
  and the flipped row of a problem when the file has no question columns at all.

Two rows are of one problem when they share ANY key: renumbered ids, ids stored as floats, or a
dropped id column still match by the question texts. Texts are stored as SHA-256 prefixes.

``group_column`` is the column that groups rows for held-out splits and bootstrap CIs.
"""

from __future__ import annotations

import hashlib
import math
import re

import pandas as pd

FORWARD_COLUMN = "question"
REVERSE_COLUMN = "relevant-question"
ID_COLUMN = "problem_id"
USER_TURN = re.compile(r"<\|im_start\|>user\n(.*?)(?:<\|im_end\|>|$)", re.DOTALL)
DIGEST_CHARS = 24


def group_column(frame: pd.DataFrame) -> str:
    """The column shared by a problem's rows: `problem_id` in our synthetic data; in the study's
    data the forward `question` is shared by the original and the flipped row of a problem."""
    return ID_COLUMN if ID_COLUMN in frame.columns else FORWARD_COLUMN


def normalized_id(value) -> str | None:
    """3, 3.0, "3" and " 3 " -> "3"; other strings stripped; missing values -> None."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    text = str(value).strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    if math.isfinite(number) and number.is_integer():
        return str(int(number))
    return repr(number) if math.isfinite(number) else text


def text_digest(text: str) -> str:
    """White space collapsed, then a SHA-256 prefix."""
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()[:DIGEST_CHARS]


def user_turn(prompt: str) -> str | None:
    """The (last) user turn of a chat-formatted prompt, None for a prompt without one."""
    turns = USER_TURN.findall(prompt)
    return turns[-1] if turns else None


def _text(value) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def row_keys(row: pd.Series, example=None) -> frozenset[str]:
    """Every key of one source row (and its ``fwdrev.data.PreferenceExample``, if loaded)."""
    keys = set()
    if (problem_id := normalized_id(row.get(ID_COLUMN))) is not None:
        keys.add(f"problem_id:{problem_id}")
    for kind, column in (("forward", FORWARD_COLUMN), ("reverse", REVERSE_COLUMN)):
        if (text := _text(row.get(column))) is not None:
            keys.add(f"{kind}:{text_digest(text)}")
    if example is not None and example.prompt_is_rendered:
        kind = "reverse" if example.sample_type == "flipped" else "forward"
        if (text := user_turn(example.prompt)) is not None:
            keys.add(f"{kind}:{text_digest(text)}")
    if example is not None and example.shape == "embedded":
        keys.update(f"response:{text_digest(r)}" for r in (example.chosen, example.rejected) if _text(r))
    return frozenset(keys)


def problem_keys(data, example_ids=None) -> dict[int, frozenset[str]]:
    """example_id -> the keys of its problem, for the rows of ``data`` (``fwdrev.data.PreferenceData``)."""
    examples = {e.example_id: e for e in data.examples}
    ids = list(examples) if example_ids is None else [int(i) for i in example_ids]
    return {i: row_keys(data.frame.loc[i], examples.get(i)) for i in ids}
