"""``--scoring original``: the token sequences the study's published figure was scored on.

The original analysis (16demi/ReasonAlign-analysis, ``calculate_log_probs`` and
``format_prompt``) scored each example as follows, and this module encodes exactly that into
``TokenizedPair``s, so the chunked, batched scoring path (``score_pairs``) computes it:

* prompt: a fixed system turn + the row's ``question`` column (``ORIGINAL_PROMPT_TEMPLATE``),
  also for ``flipped`` rows, whose conversations hold the reverse question instead;
* completion: the whole ``text`` / ``worse-text`` string, which in the study's data repeats
  its own system and user turns, tokenized on its own (``tokenizer.encode``, the tokenizer's
  default special tokens), cut to its first ``max_tokens`` tokens, then its first token
  dropped (meant to drop a BOS token; Qwen adds none, so it drops ``<|im_start|>``);
* average and peak per-token log-prob over those completion tokens (``logp_mean``,
  ``logp_max``); nothing is truncated beyond that.

Rows the original could not score (a completion of fewer than two tokens: it returned -inf
and skipped the row) and rows longer than ``--max_length`` stop the run with their indices,
or are excluded and reported with ``--drop_invalid_rows``.
"""

from __future__ import annotations

from fwdrev.data import DataValidationError, PreferenceData, RowSelection
from fwdrev.data_checks import preview
from fwdrev.tokenization import TokenizedPair

SCORINGS = ("response", "original")
ORIGINAL_PROMPT_TEMPLATE = ("<|im_start|>system\nYou are a helpful assistant.\n<|im_end|>\n"
                            "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
MIN_MAX_TOKENS = 2  # the cut keeps max_tokens tokens, then drops one


def original_prompt_ids(tokenizer, question: str) -> list[int]:
    return tokenizer.encode(ORIGINAL_PROMPT_TEMPLATE.format(question=question))


def original_completion_ids(tokenizer, completion: str, max_tokens: int) -> tuple[list[int], bool]:
    """The scored tokens of one completion (encoded alone, first ``max_tokens`` kept, first
    dropped), and whether the cut removed any."""
    ids = tokenizer.encode(completion)
    return ids[:max_tokens][1:], len(ids) > max_tokens


def encode_original_examples(tokenizer, data: PreferenceData, rows: RowSelection, max_tokens: int,
                             max_length: int, max_prompt_length: int) -> list[TokenizedPair]:
    """One ``TokenizedPair`` per used row of ``data`` (its source rows in ``data.frame``, read with ``rows``)."""
    prompt_field = rows.prompt_field
    if max_tokens < MIN_MAX_TOKENS:
        raise DataValidationError(f"--scoring original needs --max_tokens >= {MIN_MAX_TOKENS}, "
                                  f"got {max_tokens} (the original cut at 1000)")
    path = data.report.path
    if prompt_field not in data.frame.columns:
        raise DataValidationError(f"{path}: --scoring original needs the question column "
                                  f"'{prompt_field}' (--prompt_field); available columns: "
                                  f"{list(data.frame.columns)}")
    problems: dict[str, list[int]] = {}
    pairs, cut = [], []
    for example in data.examples:
        row = data.frame.loc[example.example_id]
        question = row[prompt_field]
        if not isinstance(question, str):
            problems.setdefault(f"column '{prompt_field}': missing or non-string question "
                                "(the prompt of --scoring original)", []).append(example.example_id)
            continue
        prompt_ids = original_prompt_ids(tokenizer, question)
        (chosen_ids, chosen_cut), (rejected_ids, rejected_cut) = (
            original_completion_ids(tokenizer, row[field], max_tokens)
            for field in (rows.chosen_field, rows.rejected_field))
        if min(len(chosen_ids), len(rejected_ids)) == 0:
            problems.setdefault("a completion of fewer than 2 tokens (the original scored no "
                                "token and skipped the row)", []).append(example.example_id)
            continue
        if (len(prompt_ids) > max_prompt_length
                or len(prompt_ids) + max(len(chosen_ids), len(rejected_ids)) > max_length):
            problems.setdefault("prompt longer than --max_prompt_length or prompt + completion "
                                "longer than --max_length (--scoring original does not "
                                "truncate; raise them)", []).append(example.example_id)
            continue
        if chosen_cut or rejected_cut:
            cut.append(example.example_id)
        pairs.append(TokenizedPair(example.example_id, prompt_ids, chosen_ids, rejected_ids))
    _record(data, problems, cut, max_tokens, rows.drop_invalid_rows, {p.example_id for p in pairs})
    return pairs


def _record(data: PreferenceData, problems: dict[str, list[int]], cut: list[int], max_tokens: int,
            drop_invalid_rows: bool, kept: set[int]) -> None:
    """Fail on problem rows (or exclude them and report); report the completions cut."""
    report = data.report
    if problems and not drop_invalid_rows:
        details = "\n".join(f"  {reason}: rows {preview(rows)}" for reason, rows in problems.items())
        raise DataValidationError(f"{report.path}: {sum(map(len, problems.values()))} rows cannot "
                                  "be scored with --scoring original (pass --drop_invalid_rows to "
                                  f"exclude them instead):\n{details}")
    report.excluded.update(problems)
    if problems:
        data.examples = [e for e in data.examples if e.example_id in kept]
        data.frame = data.frame.loc[[e.example_id for e in data.examples]]
        report.used_rows = len(data.examples)
        counts: dict[str, int] = {}
        for example in data.examples:
            counts[example.sample_type or "unknown"] = counts.get(example.sample_type or "unknown", 0) + 1
        report.sample_type_counts = counts
    if not data.examples:
        raise DataValidationError(f"{report.path}: no usable rows left\n{report.summary()}")
    report.truncated = {f"completion cut to its first {max_tokens} tokens (--scoring original)": cut}
