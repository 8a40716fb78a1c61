"""The trainer learns in the right direction: y+ goes up against y-, and a swapped pair goes down.

Everything is measured independently of the trainer's own code: log-probs come from a plain
full-logits forward pass per sequence, the reference is the untouched base model, and the
implicit rewards are beta * (log pi - log ref) computed here. A trainer that swapped chosen and
rejected anywhere (loss call, reference columns, collation order) moves these the wrong way,
even though its own logged loss still falls.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from fwdrev.data import RowSelection, load_preference_data
from fwdrev.devtools.synthetic import generate_preference_rows
from fwdrev.dpo_trainer import DPOArguments, DPOTrainer, PairCollator
from fwdrev.modeling import add_lora, load_causal_lm, load_tokenizer, make_lora_config
from fwdrev.reference import ReferenceMode
from fwdrev.tokenization import PairDataset, encode_examples

BETA = 0.1
STEPS = 4
# LoRA on the tiny model: four steps at 3e-3 separate every pair (measured: mean margin ~0.8,
# log p(y+) - log p(y-) from -0.03 to ~7.8); 1e-2 overshoots and oscillates.
LEARNING_RATE = 3e-3


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    """Tokenizer, four forward/reverse pairs (two original, two flipped) and the base model's log-probs."""
    path = tmp_path_factory.mktemp("direction") / "rows.parquet"
    generate_preference_rows(4, seed=11).to_parquet(path)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    pairs = encode_examples(tokenizer, load_preference_data(path, tokenizer=tokenizer).examples,
                            max_length=256, max_prompt_length=128)
    swapped_rows = RowSelection(chosen_field="worse-text", rejected_field="text")
    swapped = encode_examples(tokenizer, load_preference_data(path, swapped_rows, tokenizer).examples,
                              max_length=256, max_prompt_length=128)
    assert [p.chosen_ids for p in swapped] == [p.rejected_ids for p in pairs]  # really swapped
    reference = response_logps(load_causal_lm(str(tiny_model_dir)), pairs)
    return tokenizer, pairs, swapped, reference


def response_logps(model, pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(y+), log p(y-)) per pair: one full-logits forward per sequence, no batching, no padding."""
    model.eval()
    sides = []
    for side in ("chosen_ids", "rejected_ids"):
        values = []
        for pair in pairs:
            ids = torch.tensor([pair.prompt_ids + getattr(pair, side)])
            with torch.no_grad():
                logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
            token_logps = logps.gather(-1, ids[0, 1:, None])[:, 0]
            values.append(token_logps[len(pair.prompt_ids) - 1:].sum())  # position t predicts t + 1
        sides.append(torch.stack(values))
    return sides[0], sides[1]


def direction_figures(policy, reference) -> dict[str, float]:
    """Mean reward margin, reward accuracy and log p(y+) - log p(y-), rewards computed by hand."""
    chosen_rewards = BETA * (policy[0] - reference[0])
    rejected_rewards = BETA * (policy[1] - reference[1])
    return {"margin": (chosen_rewards - rejected_rewards).mean().item(),
            "accuracy": (chosen_rewards > rejected_rewards).double().mean().item(),
            "logp_gap": (policy[0] - policy[1]).mean().item()}


def train(tiny_model_dir, tokenizer, pairs, output_dir):
    """STEPS full-batch LoRA-DPO steps in this process (reference = adapter off, precomputed)."""
    model = add_lora(load_causal_lm(str(tiny_model_dir)), make_lora_config(8, 16, 0.0), seed=0)
    args = DPOArguments(output_dir=str(output_dir), max_steps=STEPS, per_device_train_batch_size=len(pairs),
                        per_device_eval_batch_size=len(pairs), learning_rate=LEARNING_RATE,
                        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, beta=BETA,
                        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0,
                        disable_tqdm=True, train_sampling_strategy="sequential")
    trainer = DPOTrainer(model=model, args=args, train_dataset=PairDataset(pairs),
                         eval_dataset=PairDataset(pairs), data_collator=PairCollator(tokenizer.pad_token_id),
                         processing_class=tokenizer, reference_mode=ReferenceMode.ADAPTER_OFF,
                         reference_key={"test": "direction"})
    trainer.train()
    logged = trainer.evaluate()  # the trainer's own metrics of the final policy on the same pairs
    return model, logged


def test_training_raises_margin_accuracy_and_logp_gap(tiny_model_dir, setup, tmp_path):
    tokenizer, pairs, _, reference = setup
    before = direction_figures(reference, reference)
    assert before["margin"] == 0.0 and before["accuracy"] == 0.0  # the policy starts as the reference
    model, logged = train(tiny_model_dir, tokenizer, pairs, tmp_path)
    policy = response_logps(model, pairs)
    after = direction_figures(policy, reference)
    assert after["margin"] > 0.4, after  # beta * log-ratio gap: the pairs are separated
    assert after["accuracy"] == 1.0, after
    assert after["logp_gap"] > before["logp_gap"] + 4.0, (before, after)
    # The trainer's logged figures are these same quantities, chosen and rejected not mixed up.
    chosen_rewards, rejected_rewards = BETA * (policy[0] - reference[0]), BETA * (policy[1] - reference[1])
    expected_loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean().item()
    assert expected_loss < math.log(2) - 0.15  # the loss left ln 2 for real
    assert logged["eval_loss"] == pytest.approx(expected_loss, abs=1e-3)
    assert logged["eval_rewards/chosen"] == pytest.approx(chosen_rewards.mean().item(), abs=1e-3)
    assert logged["eval_rewards/rejected"] == pytest.approx(rejected_rewards.mean().item(), abs=1e-3)
    assert logged["eval_rewards/margins"] == pytest.approx(after["margin"], abs=1e-3)
    assert logged["eval_rewards/accuracies"] == after["accuracy"]
    assert logged["eval_logps/chosen"] == pytest.approx(policy[0].mean().item(), abs=1e-2)
    assert logged["eval_logps/rejected"] == pytest.approx(policy[1].mean().item(), abs=1e-2)


def test_swapped_pairs_lower_margin_accuracy_and_logp_gap(tiny_model_dir, setup, tmp_path):
    tokenizer, pairs, swapped, reference = setup
    before = direction_figures(reference, reference)
    model, _ = train(tiny_model_dir, tokenizer, swapped, tmp_path)
    after = direction_figures(response_logps(model, pairs), reference)  # measured on the true pairs
    assert after["margin"] < -0.4, after
    # accuracy starts at 0 (all margins are exactly 0) and the right run ends at 1; here at most
    # one pair of four has not been pushed the wrong way yet (measured: 0.25)
    assert after["accuracy"] <= 0.25, after
    assert after["logp_gap"] < before["logp_gap"] - 4.0, (before, after)
