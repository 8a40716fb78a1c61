"""The DPO objective (Rafailov et al., 2023) and its IPO / hinge variants.

Inputs are per-sequence log-probs of the policy and the reference model. With
    logits = (log pi(y+) - log pi(y-)) - (log ref(y+) - log ref(y-))
the losses are, as in TRL's DPOTrainer:
    sigmoid: -log sigmoid(beta * logits)
    hinge:   relu(1 - beta * logits)
    ipo:     (logits - 1 / (2 * beta))^2   (IPO is meant for length-averaged log-probs)
Implicit rewards are beta * (log pi - log ref).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


@dataclass
class DPOOutput:
    losses: torch.Tensor  # (B,)
    chosen_rewards: torch.Tensor  # (B,), detached
    rejected_rewards: torch.Tensor  # (B,), detached


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
             beta: float = 0.1, loss_type: str = "sigmoid") -> DPOOutput:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    logits = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * logits)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    else:
        losses = (logits - 1 / (2 * beta)) ** 2
    return DPOOutput(losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach())
