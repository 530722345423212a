import math

import torch
from torch.testing import assert_close

from dnpo.training.losses import npo_loss, sigmoid_preference_loss
from dnpo.training.noise import GivenNoise, NoiseHead, noisy_rejected_logps, token_logps

LN2, LN3 = math.log(2.0), math.log(3.0)


def scalar(value):
    return torch.tensor(value, dtype=torch.float32)


def two_token_example():
    """A 2-token answer over a 3-word vocabulary, with logits chosen so softmax is simple.

    Reference logits are 0 everywhere, so every reference token log-prob is -ln 3.
    The policy puts logit ln 2 on each chosen token, so p = 2 / (2 + 1 + 1) = 1/2.
    The policy's rejected logits are 0, as the reference's.
    """
    chosen, rejected = torch.tensor([0, 1]), torch.tensor([2, 2])
    zeros = torch.zeros(2, 3)
    policy_chosen_logits = torch.tensor([[LN2, 0.0, 0.0], [0.0, LN2, 0.0]])
    return {
        "policy_chosen_logps": token_logps(policy_chosen_logits, chosen).sum(),  # -2 ln 2
        "policy_rejected_logps": token_logps(zeros, rejected).sum(),  # -2 ln 3
        "ref_chosen_logps": token_logps(zeros, chosen).sum(),  # -2 ln 3
        "ref_rejected_logps": token_logps(zeros, rejected).sum(),  # -2 ln 3
        "rejected": rejected,
    }


def test_sigmoid_loss_hand_computed():
    ex = two_token_example()
    assert_close(ex["policy_chosen_logps"], scalar(-2 * LN2))
    assert_close(ex["ref_chosen_logps"], scalar(-2 * LN3))

    # margin = 0.5 * [(-2 ln 2 + 2 ln 3) - 0] = ln 1.5, so the loss is -ln(1.5 / 2.5) = ln(5/3).
    losses, chosen_rewards, rejected_rewards = sigmoid_preference_loss(
        ex["policy_chosen_logps"], ex["policy_rejected_logps"],
        ex["ref_chosen_logps"], ex["ref_rejected_logps"], beta=0.5,
    )
    assert_close(losses, scalar(math.log(5 / 3)))
    assert_close(chosen_rewards, scalar(math.log(1.5)))
    assert_close(rejected_rewards, scalar(0.0))


def test_npo_loss_hand_computed():
    ex = two_token_example()
    # sigma = exp(b) = 1 with W = 0. Draw 1 adds ln 2 to token 2's logit at both positions,
    # so the noisy reference gives the rejected tokens p = 2/4: log-prob -2 ln 2.
    # Draw 2 is zero: the noise term uses the clean reference, -2 ln 3.
    head = NoiseHead(hidden_size=1, vocab_size=3, init_std=1.0)
    eps1 = torch.tensor([[0.0, 0.0, LN2], [0.0, 0.0, LN2]])
    noisy = noisy_rejected_logps(
        torch.ones(2, 1), torch.zeros(2, 3), ex["rejected"], GivenNoise(eps1, torch.zeros(2, 3)),
        chunk_size=1, noise_head=head, log_std_max=0.0,
    )
    assert_close(noisy.model_token_logps.sum(), scalar(-2 * LN2))
    assert_close(noisy.noise_token_logps.sum(), scalar(-2 * LN3))
    assert_close(noisy.variance_mean, scalar(1.0))

    terms = npo_loss(
        ex["policy_chosen_logps"], ex["policy_rejected_logps"], ex["ref_chosen_logps"],
        noisy.model_token_logps.sum(), noisy.noise_token_logps.sum(), noisy.variance_mean,
        beta=0.5, alpha=0.01,
    )
    # Model term: margin = 0.5 * [(2 ln 3 - 2 ln 2) - (-2 ln 3 + 2 ln 2)] = 2 ln 1.5 = ln 2.25,
    # loss -ln(2.25 / 3.25) = ln(13/9). Noise term: margin ln 1.5, loss ln(5/3).
    assert_close(terms.model_losses, scalar(math.log(13 / 9)))
    assert_close(terms.noise_losses, scalar(math.log(5 / 3)))
    assert_close(terms.variance_penalty, scalar(0.01))
    assert_close(terms.loss, scalar(math.log(13 / 9) - math.log(5 / 3) + 0.01))
    assert_close(terms.rejected_rewards, scalar(0.5 * (-2 * LN3 + 2 * LN2)))


def test_npo_loss_routes_gradients():
    policy_chosen = torch.tensor([-3.0, -4.0], requires_grad=True)
    policy_rejected = torch.tensor([-5.0, -2.0], requires_grad=True)
    ref_chosen = torch.tensor([-3.5, -4.5])
    model_noisy = torch.tensor([-5.5, -2.5], requires_grad=True)
    noise_noisy = torch.tensor([-5.2, -2.2], requires_grad=True)
    variance = torch.tensor(0.3, requires_grad=True)
    terms = npo_loss(policy_chosen, policy_rejected, ref_chosen, model_noisy, noise_noisy,
                     variance, beta=0.1, alpha=0.5)

    grads = torch.autograd.grad(
        terms.model_term, [policy_chosen, policy_rejected, model_noisy, noise_noisy, variance],
        allow_unused=True,
    )
    assert grads[0] is not None and grads[0].abs().sum() > 0
    assert grads[1] is not None and grads[1].abs().sum() > 0
    assert grads[2] is None
    assert grads[3] is None
    assert grads[4] is None

    grads = torch.autograd.grad(
        terms.noise_term, [policy_chosen, policy_rejected, model_noisy, noise_noisy, variance],
        allow_unused=True,
    )
    assert grads[0] is None
    assert grads[1] is None
    assert grads[2] is None
    assert grads[4] == 0.5
    # The head minimizes L = ... - l(margin): it lowers the noisy reference log-prob of the
    # rejected answer, which narrows the margin, so dL/d(noisy logp) is positive.
    assert (grads[3] > 0).all()
