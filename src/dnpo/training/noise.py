"""The trainable noise head and the noisy reference log-probs of rejected answers.

For each completion token t of a rejected answer, with h_t the frozen reference's
last hidden state and z_t its logits (size V):

    log_std_t = W h_t + b                         (Eq. 6, the noise head)
    z'_t      = z_t + exp(log_std_t) * eps_t      eps_t ~ N(0, I_V)
    noisy token log-prob = log_softmax(z'_t)[y_t] (Eq. 7)

log_std is clamped at 0.5 * ln(eps_max), so sigma^2 <= eps_max. Entries above the cap
get no gradient through the clamp. The head's matrix products use autocast's dtype
when autocast is on (bf16 training) and fp32 otherwise. Sigma, the noise and the
softmax are always fp32.

Memory: the noise, the noisy logits and their softmax are (positions, V) tensors. They
are built for `chunk_size` positions at a time, and backward recomputes each chunk from
the inputs (hidden states, reference logits, labels) instead of storing it, as
activation checkpointing does. The chunks' weight gradients add into one (V, d) buffer.
The recomputation draws the same eps because each chunk's draw comes from a generator
seeded by (call seed, first position, draw number), never from the global RNG.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from dnpo.errors import DataError

NOISE_HEAD_FILE = "noise_head.safetensors"


class NoiseHead(nn.Linear):
    """Linear(d, V) mapping a reference hidden state to the log-std of logit noise.

    Initialised with W = 0 and b = ln(init_std): every position and token starts with
    noise std `init_std`, so with a small value training starts close to SPIN, and
    the head learns from there which tokens to perturb.
    """

    def __init__(self, hidden_size: int, vocab_size: int, init_std: float = 0.1) -> None:
        if init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {init_std}")
        self.init_std = init_std
        super().__init__(hidden_size, vocab_size, bias=True)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        nn.init.constant_(self.bias, math.log(self.init_std))


def save_noise_head(state_dict: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write a noise head's `weight` (V, d) and `bias` (V,) to a safetensors file."""
    path = Path(path)
    tensors = {key: state_dict[key].detach().to("cpu").contiguous() for key in ("weight", "bias")}
    vocab_size, hidden_size = tensors["weight"].shape
    metadata = {"format": "pt", "hidden_size": str(hidden_size), "vocab_size": str(vocab_size)}
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_noise_head_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the weight and bias of a noise head file; raise DataError for any other file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"noise head file not found: {path}; pass the {NOISE_HEAD_FILE} of a dnpo training run"
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise DataError(
            f"noise head file {path} is not a readable safetensors file ({error}); pass the "
            f"{NOISE_HEAD_FILE} of a dnpo training run"
        ) from None
    if set(state) != {"weight", "bias"}:
        raise DataError(f"{path} is not a noise head file: tensors {sorted(state)}, expected weight and bias")
    return state


def load_noise_head_state(path: str | Path, hidden_size: int, vocab_size: int) -> dict[str, torch.Tensor]:
    """Read a noise head file and check that its shape fits the model."""
    state = read_noise_head_file(path)
    if tuple(state["weight"].shape) != (vocab_size, hidden_size):
        raise DataError(
            f"noise head {path} has shape {tuple(state['weight'].shape)}, but the model needs "
            f"({vocab_size}, {hidden_size}); start without it or use the head of the same model family"
        )
    return state


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return log_softmax(logits)[label] in fp32: logits (n, V), labels (n,) -> (n,)."""
    logits = logits.float()
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


class NoiseSource(Protocol):
    """Standard normal noise for positions [start, start + count) of one draw (1 or 2).

    Must return equal values for equal arguments, because backward draws again to
    recompute a chunk, and a new tensor each call, because callers overwrite it.
    """

    def __call__(
        self, start: int, count: int, draw: int, vocab_size: int, device: torch.device
    ) -> torch.Tensor: ...


@dataclass
class SeededNoise:
    """Noise from a generator seeded by (seed, chunk start, draw); a fresh seed per step.

    The values depend on the chunk boundaries, so two chunk sizes give two different
    (equally valid) samples. `GivenNoise` fixes eps across chunk sizes.
    """

    seed: int

    def __call__(
        self, start: int, count: int, draw: int, vocab_size: int, device: torch.device
    ) -> torch.Tensor:
        key = f"{self.seed}:{start}:{draw}".encode()
        chunk_seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1
        generator = torch.Generator(device=device)
        generator.manual_seed(chunk_seed)
        return torch.randn(
            (count, vocab_size), generator=generator, device=device, dtype=torch.float32
        )


@dataclass
class GivenNoise:
    """Noise sliced from explicit (n, V) tensors eps1 and eps2, for tests and replays."""

    eps1: torch.Tensor
    eps2: torch.Tensor

    def __call__(
        self, start: int, count: int, draw: int, vocab_size: int, device: torch.device
    ) -> torch.Tensor:
        eps = self.eps1 if draw == 1 else self.eps2
        # A copy, because the noisy log-prob computation overwrites the noise in place.
        return eps[start : start + count].to(device=device, dtype=torch.float32, copy=True)


@dataclass
class NoisyLogps:
    """Noisy reference log-probs of rejected completion tokens, shape (n,), and noise stats."""

    model_token_logps: torch.Tensor  # eps1, sigma frozen, detached
    noise_token_logps: torch.Tensor | None  # eps2, gradient reaches the head; None without a head
    variance_mean: torch.Tensor | None  # () mean sigma^2 over positions and vocabulary
    std_mean: torch.Tensor  # () detached
    std_max: torch.Tensor  # () detached


def gathered_parameters(*params: torch.Tensor) -> Any:
    """Return a context that gathers DeepSpeed ZeRO-3 partitioned parameters, else a no-op.

    The noise head's weight is read directly, not through the module's forward, so the
    ZeRO-3 hooks that normally gather it do not run.
    NOTE: untested, since the test environment has no DeepSpeed. Whether ZeRO-3 then
    reduces the weight gradient that backward returns is unverified.
    """
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """Return a sharded FSDP2 DTensor as a plain full tensor, other tensors unchanged.

    The conversion is differentiable, so gradients flow back to the DTensor.
    """
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def head_matmul_dtype(device_type: str) -> torch.dtype:
    """Return the dtype of the noise head's matrix products: autocast's dtype, else fp32.

    Under bf16 autocast an fp32 product would run far below the GPU's bf16 rate, so the
    head follows autocast like the model's other linear layers. Softmax and sigma stay fp32.
    """
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.float32


def _noisy_logps_(eps: torch.Tensor, std: torch.Tensor | float, logits: torch.Tensor,
                  labels: torch.Tensor) -> torch.Tensor:
    """Return log_softmax(logits + std * eps)[label], overwriting `eps`: all (n, V) -> (n,)."""
    if torch.is_tensor(std):
        noisy = torch.addcmul(logits, eps, std, out=eps)
    else:
        noisy = eps.mul_(std).add_(logits)
    return token_logps(noisy, labels)


def _chunk_log_std(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Return W h + b in fp32, before the cap: hidden (c, d) -> (c, V).

    `weight` (V, d) and `bias` (V,) are already in the product dtype.
    """
    return torch.addmm(bias, hidden.to(weight.dtype), weight.t()).float()


class _NoisyLogps(torch.autograd.Function):
    """Both noise draws for all rejected positions, chunk by chunk, with a recomputing backward.

    forward returns the noise term's token log-probs (draw 2, differentiable in W and b),
    the sum of sigma^2, and, without gradient, the model term's token log-probs (draw 1)
    and sigma's sum and max. backward recomputes sigma and the draw-2 softmax chunk by
    chunk from the inputs, so nothing of shape (n, V) is kept between forward and
    backward, and adds each chunk's weight gradient into one (V, d) buffer. Buffers are
    updated in place, which avoids one fresh (c, V) allocation per operation.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                weight: torch.Tensor, bias: torch.Tensor, log_std_max: float, noise: NoiseSource,
                chunk_size: int) -> tuple[torch.Tensor, ...]:
        count, vocab_size = logits.shape
        device = logits.device
        dtype = head_matmul_dtype(device.type)
        model_logps = torch.empty(count, dtype=torch.float32, device=device)
        noise_logps = torch.empty(count, dtype=torch.float32, device=device)
        variance_sum = torch.zeros((), dtype=torch.float32, device=device)
        # Summed in float64: an fp32 sum over n * V entries drifts visibly above the max.
        std_sum = torch.zeros((), dtype=torch.float64, device=device)
        std_max = torch.zeros((), dtype=torch.float32, device=device)
        with torch.autocast(device.type, enabled=False), gathered_parameters(weight, bias):
            head_weight, head_bias = weight.to(dtype), bias.to(dtype)
            for start in range(0, count, chunk_size):
                rows = slice(start, min(start + chunk_size, count))
                std = _chunk_log_std(hidden[rows], head_weight, head_bias)
                std.clamp_(max=log_std_max).exp_()
                chunk_logits = logits[rows].float()
                eps = noise(start, std.size(0), 1, vocab_size, device)
                model_logps[rows] = _noisy_logps_(eps, std, chunk_logits, labels[rows])
                eps = noise(start, std.size(0), 2, vocab_size, device)
                noise_logps[rows] = _noisy_logps_(eps, std, chunk_logits, labels[rows])
                variance_sum += torch.linalg.vector_norm(std).square()
                std_sum += std.sum(dtype=torch.float64)
                torch.maximum(std_max, std.max(), out=std_max)
                del std, eps, chunk_logits

        # The inputs are saved as given: an fp32 copy of bf16 logits would stay alive.
        ctx.save_for_backward(hidden, logits, labels, weight, bias)
        ctx.log_std_max, ctx.noise, ctx.chunk_size, ctx.dtype = log_std_max, noise, chunk_size, dtype
        ctx.mark_non_differentiable(model_logps, std_sum, std_max)
        return noise_logps, variance_sum, model_logps, std_sum, std_max

    @staticmethod
    def backward(ctx: Any, grad_logps: torch.Tensor, grad_variance: torch.Tensor,
                 *unused: Any) -> tuple[torch.Tensor | None, ...]:
        hidden, logits, labels, weight, bias = ctx.saved_tensors
        count, vocab_size = logits.shape
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
        grad_logps = grad_logps.float()
        with torch.autocast(logits.device.type, enabled=False), gathered_parameters(weight, bias):
            head_weight, head_bias = weight.to(ctx.dtype), bias.to(ctx.dtype)
            for start in range(0, count, ctx.chunk_size):
                rows = slice(start, min(start + ctx.chunk_size, count))
                std = _chunk_log_std(hidden[rows], head_weight, head_bias)
                # clamp passes the gradient where its input is at or below the cap.
                below_cap = std <= ctx.log_std_max
                std.clamp_(max=ctx.log_std_max).exp_()
                eps = ctx.noise(start, std.size(0), 2, vocab_size, logits.device)
                chunk_grad_logps = grad_logps[rows]

                # d logp / d z' = onehot(label) - softmax(z'), with z' = z + sigma * eps.
                noisy = torch.addcmul(logits[rows].float(), std, eps)
                grad = noisy.sub_(torch.logsumexp(noisy, dim=-1, keepdim=True)).exp_()
                grad.mul_(-chunk_grad_logps.unsqueeze(-1))
                positions = torch.arange(std.size(0), device=grad.device)
                grad[positions, labels[rows]] += chunk_grad_logps
                # d/d sigma = eps * dL/dz' + 2 sigma dL/d(sum sigma^2); d sigma / d log_std = sigma.
                grad.mul_(eps).addcmul_(std, 2 * grad_variance.float())
                grad.mul_(std).mul_(below_cap)

                chunk_hidden = hidden[rows].to(ctx.dtype)
                if ctx.dtype == torch.float32:
                    grad_weight.addmm_(grad.t(), chunk_hidden)
                else:
                    grad_weight += grad.t().to(ctx.dtype).mm(chunk_hidden)
                grad_bias += grad.sum(0)
                del std, below_cap, eps, noisy, grad
        return (None, None, None, grad_weight.to(weight.dtype), grad_bias.to(bias.dtype),
                None, None, None)


def noisy_rejected_logps(
    ref_hidden: torch.Tensor,
    ref_logits: torch.Tensor,
    labels: torch.Tensor,
    noise: NoiseSource,
    chunk_size: int,
    noise_head: NoiseHead | None = None,
    log_std_max: float = 0.0,
    fixed_std: float | None = None,
) -> NoisyLogps:
    """Compute noisy reference log-probs of rejected completion tokens, chunk by chunk.

    ref_hidden (n, d) and ref_logits (n, V) are the frozen reference's last hidden
    states and logits at the positions that predict `labels` (n,). With `noise_head`,
    draw 1 (model term, sigma detached) and draw 2 (noise term, differentiable in the
    head) are both computed. Without it, `fixed_std` sets sigma and only draw 1 exists.
    """
    if (noise_head is None) == (fixed_std is None):
        raise ValueError("pass exactly one of noise_head and fixed_std")
    count, vocab_size = ref_logits.shape
    if noise_head is None:
        model_parts = []
        with torch.no_grad():
            for start in range(0, count, chunk_size):
                stop = min(start + chunk_size, count)
                eps = noise(start, stop - start, 1, vocab_size, ref_logits.device)
                logits = ref_logits[start:stop].float()
                model_parts.append(_noisy_logps_(eps, fixed_std, logits, labels[start:stop]))
        model_token_logps = torch.cat(model_parts) if model_parts else ref_logits.new_zeros(0)
        std = torch.tensor(fixed_std, dtype=torch.float32, device=ref_logits.device)
        return NoisyLogps(model_token_logps, None, None, std, std)

    noise_token_logps, variance_sum, model_token_logps, std_sum, std_max = _NoisyLogps.apply(
        ref_hidden, ref_logits, labels, _full(noise_head.weight), _full(noise_head.bias),
        log_std_max, noise, chunk_size,
    )
    elements = max(count * vocab_size, 1)
    return NoisyLogps(
        model_token_logps=model_token_logps,
        noise_token_logps=noise_token_logps,
        variance_mean=variance_sum / elements,
        std_mean=(std_sum / elements).float(),
        std_max=std_max,
    )
