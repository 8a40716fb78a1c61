"""The DPO loss against hand-computed numbers and TRL's formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from fwdrev.dpo_loss import dpo_loss


def losses_for(logit_difference, beta, loss_type):
    zero = torch.zeros(1)
    return dpo_loss(torch.tensor([logit_difference]), zero, zero, zero, beta, loss_type).losses


def test_sigmoid_hand_computed():
    assert losses_for(3.0, 0.1, "sigmoid").item() == pytest.approx(0.554355, abs=1e-6)
    assert losses_for(0.0, 0.1, "sigmoid").item() == pytest.approx(math.log(2), abs=1e-7)


def test_rewards_and_log_ratio_difference():
    out = dpo_loss(torch.tensor([-10.0]), torch.tensor([-20.0]), torch.tensor([-12.0]),
                   torch.tensor([-15.0]), beta=0.5)
    # logits = (-10 - -20) - (-12 - -15) = 7
    assert out.chosen_rewards.item() == pytest.approx(1.0)  # 0.5 * (-10 + 12)
    assert out.rejected_rewards.item() == pytest.approx(-2.5)  # 0.5 * (-20 + 15)
    assert out.losses.item() == pytest.approx(-math.log(1 / (1 + math.exp(-3.5))), abs=1e-6)


def trl_losses(chosen_logratios, rejected_logratios, beta, loss_type, label_smoothing=0.0):
    """TRL DPOTrainer.dpo_loss (trl/trainer/dpo_trainer.py), transcribed for the three types."""
    logits = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        return (-F.logsigmoid(beta * logits) * (1 - label_smoothing)
                - F.logsigmoid(-beta * logits) * label_smoothing)
    if loss_type == "hinge":
        return torch.relu(1 - beta * logits)
    if loss_type == "ipo":
        return (logits - 1 / (2 * beta)) ** 2
    raise ValueError(loss_type)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0])
def test_matches_trl_formulas(loss_type, beta):
    generator = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (torch.randn(64, generator=generator) * 5 for _ in range(4))
    ours = dpo_loss(pc, pr, rc, rr, beta, loss_type)
    assert torch.allclose(ours.losses, trl_losses(pc - rc, pr - rr, beta, loss_type), atol=1e-6)
    assert torch.allclose(ours.chosen_rewards, beta * (pc - rc))


def test_hinge_and_ipo_hand_values():
    assert losses_for(3.0, 0.1, "hinge").item() == pytest.approx(0.7)
    assert losses_for(30.0, 0.1, "hinge").item() == 0.0
    assert losses_for(3.0, 0.1, "ipo").item() == pytest.approx((3 - 5) ** 2)


def test_unknown_loss_type():
    with pytest.raises(ValueError, match="loss_type"):
        losses_for(1.0, 0.1, "kto")
