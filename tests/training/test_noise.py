import math

import pytest
import torch
from torch.testing import assert_close

from dnpo.training.noise import (
    GivenNoise,
    NoiseHead,
    SeededNoise,
    head_matmul_dtype,
    load_noise_head_state,
    noisy_rejected_logps,
    save_noise_head,
    token_logps,
)

N, D, V = 7, 5, 11


def inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, D, generator=generator)
    logits = torch.randn(N, V, generator=generator) * 3
    labels = torch.randint(0, V, (N,), generator=generator)
    return hidden, logits, labels


def trained_head(seed=1):
    head = NoiseHead(D, V, init_std=0.2)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, D, generator=torch.Generator().manual_seed(seed)) * 0.3)
    return head


def unchunked_reference(hidden, logits, labels, head, eps1, eps2, log_std_max):
    """Eq. 6-7 over all positions at once, with plain autograd."""
    std = head(hidden).clamp(max=log_std_max).exp()
    model = token_logps(logits + std.detach() * eps1, labels)
    noise = token_logps(logits + std * eps2, labels)
    return model, noise, std.square().mean()


def test_noise_head_starts_at_init_std():
    head = NoiseHead(D, V, init_std=0.05)
    assert torch.equal(head.weight, torch.zeros(V, D))
    assert_close(head(torch.randn(3, D)).exp(), torch.full((3, V), 0.05))


@pytest.mark.parametrize("chunk_size", [1, 3, N, 100])
def test_chunked_equals_unchunked(chunk_size):
    hidden, logits, labels = inputs()
    eps1, eps2 = torch.randn(N, V), torch.randn(N, V)
    head = trained_head()
    log_std_max = 0.5 * math.log(0.5)

    noisy = noisy_rejected_logps(hidden, logits, labels, GivenNoise(eps1, eps2), chunk_size,
                                 noise_head=head, log_std_max=log_std_max)
    (noisy.noise_token_logps.sum() + noisy.variance_mean).backward()
    chunked_grads = [p.grad.clone() for p in head.parameters()]
    head.zero_grad()

    model, noise, variance = unchunked_reference(hidden, logits, labels, head, eps1, eps2, log_std_max)
    (noise.sum() + variance).backward()
    assert_close(noisy.model_token_logps, model, atol=1e-5, rtol=0)
    assert_close(noisy.noise_token_logps, noise.detach(), atol=1e-5, rtol=0)
    assert_close(noisy.variance_mean, variance.detach(), atol=1e-5, rtol=0)
    for chunked, full in zip(chunked_grads, [p.grad for p in head.parameters()], strict=True):
        assert_close(chunked, full, atol=1e-5, rtol=0)
    assert not noisy.model_token_logps.requires_grad


def test_seeded_noise_replays_in_backward():
    hidden, logits, labels = inputs()
    head = trained_head()
    noise = SeededNoise(seed=123)
    noisy = noisy_rejected_logps(hidden, logits, labels, noise, 3, noise_head=head, log_std_max=0.0)
    noisy.noise_token_logps.sum().backward()
    chunked_grad = head.weight.grad.clone()
    head.zero_grad()

    # Rebuild the same eps chunk by chunk, then differentiate without checkpointing.
    eps1 = torch.cat([noise(s, min(3, N - s), 1, V, torch.device("cpu")) for s in range(0, N, 3)])
    eps2 = torch.cat([noise(s, min(3, N - s), 2, V, torch.device("cpu")) for s in range(0, N, 3)])
    model, expected, _ = unchunked_reference(hidden, logits, labels, head, eps1, eps2, 0.0)
    expected.sum().backward()
    assert_close(noisy.model_token_logps, model, atol=1e-5, rtol=0)
    assert_close(chunked_grad, head.weight.grad, atol=1e-5, rtol=0)
    assert not torch.equal(eps1, eps2)
    assert torch.equal(noise(0, 3, 1, V, torch.device("cpu")), noise(0, 3, 1, V, torch.device("cpu")))


def test_sigma_cap_holds_for_extreme_weights():
    hidden, logits, labels = inputs()
    head = NoiseHead(D, V, init_std=0.1)
    with torch.no_grad():
        head.weight.fill_(1e4)
        head.bias.fill_(50.0)
    eps_max = 0.3
    noisy = noisy_rejected_logps(hidden, logits, labels, SeededNoise(0), 4, noise_head=head,
                                 log_std_max=0.5 * math.log(eps_max))
    assert noisy.std_max.item() ** 2 <= eps_max * (1 + 1e-6)
    assert noisy.variance_mean.item() <= eps_max * (1 + 1e-6)
    assert torch.isfinite(noisy.model_token_logps).all()
    noisy.noise_token_logps.sum().backward()
    assert torch.isfinite(head.weight.grad).all()


def test_fixed_noise_reads_variance():
    hidden, logits, labels = inputs()
    eps1 = torch.randn(N, V)
    noisy = noisy_rejected_logps(hidden, logits, labels, GivenNoise(eps1, eps1), 2, fixed_std=0.5**0.5)
    assert_close(noisy.model_token_logps, token_logps(logits + 0.5**0.5 * eps1, labels))
    assert noisy.noise_token_logps is None
    assert noisy.std_mean.item() == pytest.approx(0.5**0.5)


def test_backward_keeps_no_noise_tensor():
    hidden, logits, labels = inputs()
    head = trained_head()
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        noisy = noisy_rejected_logps(hidden, logits, labels, SeededNoise(1), 2, noise_head=head)
    noisy.noise_token_logps.sum().backward()
    assert head.weight.grad.abs().sum() > 0
    # Backward recomputes the chunks, so only the inputs are saved: the reference logits, no
    # sigma, eps or noisy logits of shape (positions, V).
    vocab_sized = [tensor for tensor in saved if tensor.dim() == 2 and tensor.shape[-1] == V]
    assert vocab_sized
    storage = logits.untyped_storage().data_ptr()
    assert all(tensor.untyped_storage().data_ptr() == storage for tensor in vocab_sized)


def test_noise_head_file_round_trip(tmp_path):
    head = trained_head()
    path = save_noise_head(head.state_dict(), tmp_path / "noise_head.safetensors")
    state = load_noise_head_state(path, D, V)
    assert torch.equal(state["weight"], head.weight)
    with pytest.raises(ValueError, match="shape"):
        load_noise_head_state(path, D + 1, V)


def test_bf16_autocast_matches_fp32_loosely():
    hidden, logits, labels = inputs()
    eps1, eps2 = torch.randn(N, V), torch.randn(N, V)
    head = trained_head()
    full = noisy_rejected_logps(hidden, logits, labels, GivenNoise(eps1, eps2), 3, noise_head=head)
    full.noise_token_logps.sum().backward()
    full_grad = head.weight.grad.clone()
    head.zero_grad()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head_matmul_dtype("cpu") == torch.bfloat16
        half = noisy_rejected_logps(hidden, logits, labels, GivenNoise(eps1, eps2), 3, noise_head=head)
    half.noise_token_logps.sum().backward()
    assert half.noise_token_logps.dtype == torch.float32
    assert_close(half.noise_token_logps, full.noise_token_logps.detach(), atol=0.05, rtol=0)
    assert_close(head.weight.grad, full_grad, atol=0.02, rtol=0.05)
    assert head_matmul_dtype("cpu") == torch.float32
