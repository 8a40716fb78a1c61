"""Our DPO trainer and TRL's DPOTrainer take the very same steps (TRL is a pinned test dependency).

Same tiny model, adapter init, token ids and recipe (scripts/benchmark_dpo.py runs each trainer
in its own process). The learning rate is large enough that the loss moves well away from ln 2
within the run, so a trainer that learns in another direction, or scores the wrong side, gives
other losses and other log-probs from step 2 on. Log-probs agree per step to 1e-6 (relative);
losses to 1e-5: our head normalises with log_softmax, TRL with logsumexp, an ulp apart in fp32,
and Adam's first update (m / sqrt(v), elementwise) turns that into ~3e-6 in the step-2 loss. A
trainer that scores the sides swapped is off by 1.4e-4 at step 2.
"""

import math

import pytest
from helpers import load_script

benchmark_dpo = load_script("scripts", "benchmark_dpo")

STEPS = 4
# A constant 1e-2 moves the LoRA adapter far in four steps.
TINY_RUN = ["--steps", str(STEPS), "--learning_rate", "1e-2", "--min_response_tokens", "30",
            "--max_response_tokens", "60", "--vocab_size", "2048", "--hidden_size", "32",
            "--intermediate_size", "64", "--lora_r", "4", "--lora_alpha", "8"]


@pytest.fixture(scope="module")
def rows():
    missing = benchmark_dpo.trl_missing_reason()
    assert missing is None, f"{missing}: trl is a pinned test dependency in requirements.txt"
    rows, _ = benchmark_dpo.run_benchmark(benchmark_dpo.parse_args(TINY_RUN))
    assert [row["method"] for row in rows] == ["ours", "trl"]
    assert all("error" not in row for row in rows), rows
    return rows


def test_same_start_same_data(rows):
    ours, trl = rows
    assert trl["version"] == "1.16.0"
    assert ours["lora_a_fingerprint"] == trl["lora_a_fingerprint"] and trl["same_token_ids"]
    for row in rows:
        assert row["steps"] == STEPS and len(row["losses"]) == STEPS
        assert row["losses"][0] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference


def test_losses_move_and_agree_at_every_step(rows):
    ours, trl = rows
    assert max(abs(loss - math.log(2)) for loss in ours["losses"]) > 0.05  # really trained
    for step, (a, b) in enumerate(zip(ours["losses"], trl["losses"]), start=1):
        assert a == pytest.approx(b, abs=1e-5), f"step {step}: ours {a} vs TRL {b}"


def test_policy_logps_agree_at_every_step(rows):
    """logps/chosen is the y+ log-prob of the policy before each step: it shows the direction taken."""
    ours, trl = rows
    for step, (a, b) in enumerate(zip(ours["logps_chosen"], trl["logps_chosen"]), start=1):
        assert a == pytest.approx(b, rel=1e-6), f"step {step}: ours {a} vs TRL {b}"


def test_table_has_one_row_per_trainer(rows):
    lines = benchmark_dpo.format_table(rows).splitlines()[2:]
    assert len(lines) == 2 and "TRL DPOTrainer 1.16.0" in lines[1]
