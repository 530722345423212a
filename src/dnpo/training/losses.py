"""Preference losses: the sigmoid loss (Eq. 3) and the NPO min-max objective (Eq. 10).

Equation numbers follow "Dynamic Noise Preference Optimization for LLM
Self-Improvement via Synthetic Data". Every `*_logps` argument is a sum of token
log-probs over completion tokens only, one value per pair, shape (B,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def sigmoid_preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return per-pair losses and rewards of the sigmoid preference loss (Eq. 3).

    losses = -log sigmoid(beta * [(pi_c - ref_c) - (pi_r - ref_r)]), the DPO and SPIN
    loss. Rewards are beta * log-ratio, detached, as TRL logs them. All shapes (B,).
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return losses, chosen_rewards, rejected_rewards


@dataclass
class NPOLoss:
    """Terms of the NPO objective; `loss` is the scalar to backpropagate once."""

    loss: torch.Tensor  # () = model_term + noise_term
    model_term: torch.Tensor  # () mean model loss; gradient reaches only the policy
    noise_term: torch.Tensor  # () -mean noise loss + penalty; gradient reaches only the head
    model_losses: torch.Tensor  # (B,), noise frozen, draw eps1
    noise_losses: torch.Tensor  # (B,), policy frozen, draw eps2
    variance_penalty: torch.Tensor  # (), alpha * mean sigma^2
    chosen_rewards: torch.Tensor  # (B,), of the model term
    rejected_rewards: torch.Tensor  # (B,), of the model term, against the noisy reference


def npo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    model_noisy_ref_rejected_logps: torch.Tensor,
    noise_noisy_ref_rejected_logps: torch.Tensor,
    noise_variance_mean: torch.Tensor,
    beta: float,
    alpha: float,
) -> NPOLoss:
    """Combine the model term, the noise term and the variance penalty of Eq. 10.

    L = mean l(margin(theta, sg(theta_sigma), eps1))      model term: the policy widens the margin
      - mean l(margin(sg(theta), theta_sigma, eps2))      noise term: the head narrows it
      + alpha * mean(sigma^2)

    with l(u) = -log sigmoid(u). The minus sign on the noise term makes minimizing L
    maximize the noise term's loss with respect to the head, which is the inner max of
    the min-max problem. The detaches route the model term's gradient only to the policy
    and the noise term's gradient only to the head, so one backward pass serves both.

    `model_noisy_ref_rejected_logps` and `noise_noisy_ref_rejected_logps` (B,) are the
    reference's rejected log-probs under noise draws eps1 and eps2; the first is
    detached here, the second carries the head's gradient. `noise_variance_mean` ()
    is the mean of sigma^2 over noised positions and vocabulary entries.
    """
    model_losses, chosen_rewards, rejected_rewards = sigmoid_preference_loss(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        model_noisy_ref_rejected_logps.detach(),
        beta,
    )
    noise_losses, _, _ = sigmoid_preference_loss(
        policy_chosen_logps.detach(),
        policy_rejected_logps.detach(),
        ref_chosen_logps.detach(),
        noise_noisy_ref_rejected_logps,
        beta,
    )
    variance_penalty = alpha * noise_variance_mean
    model_term = model_losses.mean()
    noise_term = -noise_losses.mean() + variance_penalty
    return NPOLoss(
        loss=model_term + noise_term,
        model_term=model_term,
        noise_term=noise_term,
        model_losses=model_losses,
        noise_losses=noise_losses,
        variance_penalty=variance_penalty,
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
    )
