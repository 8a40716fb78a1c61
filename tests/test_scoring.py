"""Per-example scoring equals a hand-rolled full-logits computation; summaries; sharding."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from fwdrev.bootstrap import bootstrap_mean_ci
from fwdrev.checkpoints import load_for_scoring
from fwdrev.data import DataValidationError, load_preference_data
from fwdrev.devtools.synthetic import generate_preference_rows
from fwdrev.score_summaries import (
    REWARD_COLUMNS,
    SCORE_COLUMNS,
    add_group_ids,
    add_reward_columns,
    checkpoint_summary,
    problem_group_ids,
    scores_table,
    summarize_scores,
)
from fwdrev.scoring import response_stats, score_pairs
from fwdrev.sharding import Shard, gather_table
from fwdrev.tokenization import encode_examples


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_for_scoring(str(tiny_model_dir))


@pytest.fixture(scope="module")
def pairs(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "six.parquet"
    generate_preference_rows(6, seed=3).to_parquet(path)
    _, tokenizer = tiny
    data = load_preference_data(path, tokenizer=tokenizer)
    return encode_examples(tokenizer, data.examples, max_length=512, max_prompt_length=256)


def full_logits_response_logps(model, prompt_ids, response_ids) -> torch.Tensor:
    """log p of each response token from the model's full logits (the slow, obvious way)."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    token_logps = logps.gather(-1, ids[0, 1:, None])[:, 0]
    return token_logps[len(prompt_ids) - 1 :]  # position t predicts token t + 1


def test_scores_equal_full_logits_computation(tiny, pairs):
    model, tokenizer = tiny
    first_k = 5
    scores = score_pairs(model, pairs, tokenizer.pad_token_id, batch_size=4, first_k=first_k,
                         chunk_size=7)
    assert list(scores["example_id"]) == [p.example_id for p in pairs]  # input order kept
    for pair, row in zip(pairs, scores.to_dict("records")):
        for side, response in (("chosen", pair.chosen_ids), ("rejected", pair.rejected_ids)):
            expected = full_logits_response_logps(model, pair.prompt_ids, response)
            # every response token is scored (the first one included), no prompt token is
            assert row[f"{side}_num_tokens"] == len(response) == len(expected)
            assert row[f"{side}_num_tokens_first_k"] == first_k
            assert row[f"{side}_logp_sum"] == pytest.approx(expected.sum().item(), abs=1e-3)
            assert row[f"{side}_logp_mean"] == pytest.approx(expected.mean().item(), abs=1e-5)
            assert row[f"{side}_logp_max"] == pytest.approx(expected.max().item(), abs=1e-5)
            head = expected[:first_k]
            assert row[f"{side}_logp_sum_first_k"] == pytest.approx(head.sum().item(), abs=1e-4)
            assert row[f"{side}_logp_mean_first_k"] == pytest.approx(head.mean().item(), abs=1e-5)
            assert row[f"{side}_logp_max_first_k"] == pytest.approx(head.max().item(), abs=1e-5)
        assert row["delta_logp_mean"] == pytest.approx(row["chosen_logp_mean"] - row["rejected_logp_mean"])


def test_scores_do_not_depend_on_batch_size_and_restore_train_mode(tiny, pairs):
    model, tokenizer = tiny
    model.train()
    one = score_pairs(model, pairs, tokenizer.pad_token_id, batch_size=1, first_k=3)
    assert model.training  # eval mode only while scoring
    model.eval()
    all_at_once = score_pairs(model, pairs, tokenizer.pad_token_id, batch_size=len(pairs), first_k=3)
    pd.testing.assert_frame_equal(one, all_at_once, check_exact=False, rtol=1e-5, atol=1e-3)


def test_response_stats_first_k_and_empty_rows():
    per_token = torch.tensor([[0.0, -1.0, -2.0, -3.0, 0.0],
                              [0.0, 0.0, -0.5, 0.0, 0.0],
                              [0.0, 0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[False, True, True, True, False],  # prompt, 3 response tokens, padding
                         [False, False, True, False, False],
                         [False, False, False, False, False]])  # empty response
    stats = response_stats(per_token, mask, first_k=2)
    assert stats["num_tokens"].tolist() == [3, 1, 0]
    assert stats["logp_sum"].tolist() == [-6.0, -0.5, 0.0]
    assert stats["logp_mean"][:2].tolist() == [-2.0, -0.5]
    assert stats["logp_max"][:2].tolist() == [-1.0, -0.5]
    assert stats["num_tokens_first_k"].tolist() == [2, 1, 0]
    assert stats["logp_sum_first_k"].tolist() == [-3.0, -0.5, 0.0]
    assert stats["logp_mean_first_k"][0].item() == -1.5
    assert math.isnan(stats["logp_mean"][2].item()) and math.isnan(stats["logp_max_first_k"][2].item())


def fake_table(num_examples: int, seed: int = 0) -> pd.DataFrame:
    """A scored table with random values, half 'original' then half 'flipped' rows."""
    rng = np.random.default_rng(seed)
    scores = pd.DataFrame({"example_id": np.arange(num_examples)})
    for column in SCORE_COLUMNS[6:]:
        scores[column] = rng.integers(1, 50, num_examples) if "num_tokens" in column else rng.normal(size=num_examples)
    types = {i: "original" if i < num_examples // 2 else "flipped" for i in range(num_examples)}
    return scores_table(scores, types, "checkpoint-10", "dpo", 2, 10)


def test_scores_table_has_exact_columns_and_types():
    table = fake_table(4)
    assert list(table.columns) == SCORE_COLUMNS
    assert table["epoch"].dtype == "int64" and str(table["step"].dtype) == "Int64"
    assert table["chosen_num_tokens"].dtype == "int64"
    assert set(table["checkpoint"]) == {"checkpoint-10"} and set(table["step"]) == {10}


def test_summary_means_cover_every_row_and_subsets():
    table = add_group_ids(fake_table(120), {i: i % 60 for i in range(120)})  # rows i and 60 + i: one problem
    summary = summarize_scores(table)
    assert set(summary) == {"all", "flipped", "original", "first50", "last50"}
    assert [summary[k]["n"] for k in ("all", "original", "flipped", "first50", "last50")] == [120, 60, 60, 50, 50]
    assert summary["all"]["means"]["delta_logp_mean"] == pytest.approx(table["delta_logp_mean"].mean())
    assert summary["all"]["means"]["chosen_num_tokens"] == pytest.approx(table["chosen_num_tokens"].mean())
    last50 = table[table["example_id"] >= 70]
    assert summary["last50"]["means"]["chosen_logp_sum"] == pytest.approx(last50["chosen_logp_sum"].mean())
    assert summary["original"]["pref_acc_full_by_sum"] == pytest.approx((table["delta_logp_sum"][:60] > 0).mean())
    assert summary["all"]["pref_acc_full"] == pytest.approx((table["delta_logp_mean"] > 0).mean())
    assert summary["all"]["pref_acc_first_k"] == pytest.approx((table["delta_logp_mean_first_k"] > 0).mean())
    assert summary["all"]["n_problems"] == 60 and summary["original"]["n_problems"] == 60
    assert summary["all"]["ci_resamples"] == "problems (group_id)" and "group_id" not in summary["all"]["means"]
    with pytest.raises(ValueError, match="'group_id'"):
        summarize_scores(fake_table(10))  # no problem key: refuses rather than treat pairs as independent
    low, high = summary["all"]["ci95_of_mean"]["delta_logp_mean"]
    assert low < table["delta_logp_mean"].mean() < high
    assert summarize_scores(table) == summary  # fixed bootstrap seed


def test_bootstrap_ci_narrows_with_more_data():
    rng = np.random.default_rng(1)
    small, large = rng.normal(size=20), rng.normal(size=2000)
    width = lambda values: np.subtract(*bootstrap_mean_ci(values)[::-1])  # noqa: E731
    assert width(large) < width(small) / 5


def test_cluster_bootstrap_of_anti_correlated_pairs_has_zero_width():
    # Each problem's flipped delta is minus its original delta (the same two traces, roles
    # swapped): every resample of whole problems has mean exactly 0, while resampling rows
    # treats the 2n rows as independent and gives a CI about 2 * 1.96 * sd / sqrt(2n) wide.
    rng = np.random.default_rng(0)
    original = rng.normal(0.5, 1.0, size=200)
    values, groups = np.concatenate([original, -original]), np.tile(np.arange(200), 2)
    assert bootstrap_mean_ci(values, groups=groups) == [0.0, 0.0]
    low, high = bootstrap_mean_ci(values)
    assert low < 0 < high
    assert high - low == pytest.approx(2 * 1.96 * values.std() / np.sqrt(400), rel=0.15)


def test_cluster_bootstrap_of_identical_pairs_is_sqrt2_wider():
    # Both rows of a problem equal: n independent values counted twice, so the honest CI is
    # sqrt(2) times wider than the row bootstrap's.
    rng = np.random.default_rng(1)
    original = rng.normal(size=300)
    values, groups = np.concatenate([original, original]), np.tile(np.arange(300), 2)
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    ratio = (width(bootstrap_mean_ci(values, samples=4000, groups=groups))
             / width(bootstrap_mean_ci(values, samples=4000)))
    assert ratio == pytest.approx(np.sqrt(2), rel=0.1)


def test_cluster_bootstrap_hand_computed():
    # Problems A = {1, 3}, B = {5}. Resampling problems: AA -> 2 (p 1/4), AB or BA -> 9/3 = 3
    # (p 1/2), BB -> 5 (p 1/4); so the 2.5% / 97.5% percentiles are 2 and 5. Resampling rows
    # draws (1, 1, 1) with p 1/27 > 2.5%, so its lower end is 1.
    values, groups = [1.0, 3.0, 5.0, np.nan], ["A", "A", "B", "B"]  # the NaN is dropped
    assert bootstrap_mean_ci(values, samples=2000, groups=groups) == [2.0, 5.0]
    assert bootstrap_mean_ci(values[:3], samples=2000) == [1.0, 5.0]
    with pytest.raises(ValueError, match="2 group keys for 3 values"):
        bootstrap_mean_ci(values[:3], groups=groups[:2])


def test_problem_group_ids_from_data_columns(shared_sample_path):
    synthetic = generate_preference_rows(6, seed=0)  # problem_id 0..2, originals then flipped rows
    assert problem_group_ids(synthetic) == {0: 0, 1: 1, 2: 2, 3: 0, 4: 1, 5: 2}
    real = pd.read_parquet(shared_sample_path, columns=["question", "sample_type"])
    groups = problem_group_ids(real)  # the forward question is shared by a problem's two rows
    assert len(set(groups.values())) == 50
    pairs = pd.Series(groups).groupby(pd.Series(groups)).size()
    assert (pairs == 2).all()
    for rows in pd.Series(list(groups)).groupby(pd.Series(groups).to_numpy()):
        assert sorted(real.loc[rows[1].to_numpy(), "sample_type"]) == ["flipped", "original"]
    assert problem_group_ids(real, group_field="question") == groups
    with pytest.raises(DataValidationError, match="'nope'.*--group_field"):
        problem_group_ids(real, group_field="nope", source="x.parquet")


def test_reward_columns_against_hand_computed_numbers():
    table = fake_table(3)
    table["chosen_logp_sum"] = [-10.0, -20.0, -30.0]
    table["rejected_logp_sum"] = [-12.0, -18.0, -40.0]
    # reference rows in another order than the table: matched by example_id, not by position
    reference = pd.DataFrame({"example_id": [2, 0, 1], "chosen_logp_sum": [-31.0, -11.0, -19.0],
                              "rejected_logp_sum": [-35.0, -15.0, -17.0]})
    rewarded = add_reward_columns(table, reference, beta=0.5)
    assert list(rewarded.columns) == SCORE_COLUMNS + REWARD_COLUMNS
    assert rewarded["ref_chosen_logp_sum"].tolist() == [-11.0, -19.0, -31.0]
    assert rewarded["ref_rejected_logp_sum"].tolist() == [-15.0, -17.0, -35.0]
    # 0.5 * (policy - reference), typed out: -10 - -11 = 1, -20 - -19 = -1, -30 - -31 = 1
    assert rewarded["chosen_reward"].tolist() == [0.5, -0.5, 0.5]
    # -12 - -15 = 3, -18 - -17 = -1, -40 - -35 = -5
    assert rewarded["rejected_reward"].tolist() == [1.5, -0.5, -2.5]
    assert rewarded["reward_margin"].tolist() == [-1.0, 0.0, 3.0]
    assert summarize_scores(rewarded, group_column=None)["all"]["reward_accuracy"] == pytest.approx(1 / 3)


def test_checkpoint_summary_rows():
    table = pd.concat([fake_table(60, seed=0), fake_table(60, seed=1).assign(checkpoint="checkpoint-20", epoch=3)])
    summary = checkpoint_summary(table)
    assert len(summary) == 2 * 5  # checkpoints x (all, flipped, original, first50, last50)
    row = summary[(summary["checkpoint"] == "checkpoint-20") & (summary["subset"] == "all")].iloc[0]
    later = table[table["epoch"] == 3]
    assert row["n"] == 60 and row["rejected_logp_mean"] == pytest.approx(later["rejected_logp_mean"].mean())
    assert row["pref_acc_full"] == pytest.approx((later["delta_logp_mean"] > 0).mean())
    assert row["pref_acc_first_k"] == pytest.approx((later["delta_logp_mean_first_k"] > 0).mean())


def test_shards_partition_the_examples_and_balance_lengths():
    items = list(range(10))
    shards = [Shard(i, 3).take(items, size=lambda x: x) for i in range(3)]
    assert sorted(sum(shards, [])) == items
    assert [len(s) for s in shards] == [4, 3, 3]
    assert shards[0][0] == 9 and shards[1][0] == 8  # longest items spread first


def test_gather_table_merges_when_every_shard_is_written(tmp_path):
    table = fake_table(7)
    final = tmp_path / "scores.parquet"
    pieces = [Shard(i, 2).take(table.to_dict("records")) for i in range(2)]
    assert gather_table(Shard(1, 2), pd.DataFrame(pieces[1]), final, range(7)) is None  # shard 0 missing
    assert not final.exists()
    merged = gather_table(Shard(0, 2), pd.DataFrame(pieces[0]), final, range(7))
    pd.testing.assert_frame_equal(merged, table, check_dtype=False)
    pd.testing.assert_frame_equal(pd.read_parquet(final), merged)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.parquet"]  # shard files removed
    # a run over 8 examples must not merge shard files holding 7
    assert gather_table(Shard(0, 2), pd.DataFrame(pieces[0]), final, range(8)) is None
    with pytest.raises(RuntimeError, match="expected examples"):
        gather_table(Shard(1, 2), pd.DataFrame(pieces[1]), final, range(8))


def test_real_data_rows_are_truncated_and_scored(tiny, shared_sample_path):
    model, tokenizer = tiny
    data = load_preference_data(shared_sample_path, tokenizer=tokenizer)
    examples = [data.examples[0], data.examples[-1]]  # one original, one flipped row
    pairs = encode_examples(tokenizer, examples, max_length=192, max_prompt_length=64,
                            report=data.report)
    assert data.report.truncated["chosen response (kept its first tokens)"] == [e.example_id for e in examples]
    scores = score_pairs(model, pairs, tokenizer.pad_token_id, batch_size=2, first_k=50)
    for pair, row in zip(pairs, scores.to_dict("records")):
        assert row["chosen_num_tokens"] == 192 - len(pair.prompt_ids)
        assert row["chosen_num_tokens_first_k"] == 50
        expected = full_logits_response_logps(model, pair.prompt_ids, pair.chosen_ids)
        assert row["chosen_logp_sum"] == pytest.approx(expected.sum().item(), abs=1e-3)
        assert row["chosen_logp_max"] == pytest.approx(expected.max().item(), abs=1e-5)
