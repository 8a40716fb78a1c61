"""Smoke-sized runs of the two benchmark scripts: the figures they print are sane."""

import pytest
import torch
from helpers import load_script

benchmark_logprobs = load_script("scripts", "benchmark_logprobs")
benchmark_dpo = load_script("scripts", "benchmark_dpo")

TINY_LOGPROBS = ["--seq_len", "48", "--vocab_size", "500", "--hidden_size", "16", "--chunk_sizes", "16",
                 "--loop_positions", "8", "--repeats", "1"]
TINY_DPO = ["--steps", "2", "--min_response_tokens", "30", "--max_response_tokens", "60", "--vocab_size", "2048",
            "--hidden_size", "32", "--intermediate_size", "64", "--lora_r", "4", "--lora_alpha", "8"]


def table_rows(table: str) -> list[str]:
    return table.splitlines()[2:]  # after the header and the alignment row


@pytest.mark.parametrize("backward", [False, True])
def test_logprob_methods_agree_in_process(backward):
    args = benchmark_logprobs.parse_args(TINY_LOGPROBS + (["--backward"] if backward else []))
    hidden, head, targets = benchmark_logprobs.build_inputs(args)
    _, reference = benchmark_logprobs.timed_full_or_chunked("full_logits", hidden, head, targets, backward)
    _, chunked = benchmark_logprobs.timed_full_or_chunked("chunked_16", hidden, head, targets, backward)
    positions = benchmark_logprobs.loop_positions(args)
    seconds, looped = benchmark_logprobs.timed_per_token_loop(hidden, head, targets, positions, backward)
    assert reference.shape == (48,) and len(positions) == 8 and seconds > 0
    assert (chunked - reference).abs().max() <= 1e-4
    assert (looped - reference[positions]).abs().max() <= 1e-4


def test_logprob_benchmark_table():
    """The whole driver: one subprocess per method, with the backward pass."""
    args = benchmark_logprobs.parse_args(TINY_LOGPROBS + ["--backward"])
    rows, threads = benchmark_logprobs.run_benchmark(args)
    assert [row["method"] for row in rows] == ["full_logits", "chunked_16", "per_token_loop"]
    assert threads >= 1
    for row in rows:
        assert row["max_abs_diff"] <= 1e-4
        assert row["tokens_per_s"] > 0 and row["peak_rss_increase_gb"] >= 0
    assert rows[0]["speedup_vs_full"] == 1.0
    assert rows[2]["extrapolated"] and rows[2]["positions_run"] == 8
    assert len(table_rows(benchmark_logprobs.format_table(rows))) == 3


def test_dpo_benchmark_reports_trl_as_unavailable(monkeypatch):
    """Without TRL the driver still prepares everything and prints TRL's row as unavailable."""
    monkeypatch.setattr(benchmark_dpo, "trl_missing_reason", lambda: "TRL is not installed")
    args = benchmark_dpo.parse_args(TINY_DPO + ["--methods", "trl", "--rounds", "2"])
    rows, data = benchmark_dpo.run_benchmark(args)
    assert rows == [{"method": "trl", "error": "TRL is not installed"}]
    assert data["pairs"] == 2 and data["response_tokens"][0] >= 30
    (row,) = table_rows(benchmark_dpo.format_table(rows))
    assert "unavailable: TRL is not installed" in row
    assert benchmark_dpo.comparison_lines(rows) == []


def test_loop_positions_cover_short_sequences():
    args = benchmark_logprobs.parse_args(["--seq_len", "5", "--loop_positions", "8"])
    assert torch.equal(benchmark_logprobs.loop_positions(args), torch.arange(5))
