"""The policy, its frozen reference and the noise head as one module.

DDP, FSDP and DeepSpeed wrap `PreferenceModel` as a whole, so the policy and the
noise head are synchronised (or sharded) together, and its `forward` returns the
loss of one batch. The reference is a frozen copy of the starting model. With LoRA
it is the same network with the adapters disabled, so no copy is made.
"""

from __future__ import annotations

import copy
import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dnpo.training.config import TrainConfig
from dnpo.training.losses import npo_loss, sigmoid_preference_loss
from dnpo.training.noise import NoiseHead, SeededNoise, noisy_rejected_logps, token_logps

logger = logging.getLogger(__name__)

# Config fields of logit transforms applied after the LM head. The log-probs here
# come from the LM head output directly, so models that set these are refused.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier",
                     "output_multiplier")


@dataclass
class LossSettings:
    """Loss hyper-parameters that `PreferenceModel.forward` needs, taken from TrainConfig."""

    mode: str
    beta: float
    alpha: float
    log_std_max: float
    fixed_std: float
    chunk_size: int

    @classmethod
    def from_config(cls, config: TrainConfig) -> LossSettings:
        return cls(
            mode=config.mode,
            beta=config.beta,
            alpha=config.alpha,
            log_std_max=0.5 * math.log(config.eps_max),
            # The DNPO paper's fixed-noise ablation (Appendix H) samples N(0, 0.5). 0.5 is read
            # as the variance, so std = sqrt(v).
            fixed_std=config.fixed_noise_variance**0.5,
            chunk_size=config.noise_chunk_size,
        )


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability of a transformers model to 0, in modules and config.

    Covers `nn.Dropout` modules and float attributes such as Llama's
    `attention_dropout`, which the attention reads at call time.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name in ("attention_dropout", "attn_dropout", "dropout", "dropout_p", "hidden_dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
    config = getattr(model, "config", None)
    if config is not None:
        for key, value in config.to_dict().items():
            if isinstance(value, float) and ("dropout" in key or "pdrop" in key):
                setattr(config, key, 0.0)


def causal_lm(model: nn.Module) -> nn.Module:
    """Return the transformers causal LM inside a PEFT model, or the model itself."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) and hasattr(model, "peft_config") else model


def check_logit_transforms(model: nn.Module) -> None:
    """Raise NotImplementedError for models that rescale or softcap logits after the LM head."""
    config = causal_lm(model).config.get_text_config()
    for name in _LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value is not None and value != 1.0:
            raise NotImplementedError(
                f"{config.model_type} sets {name}={value}, a logit transform after the LM head that "
                "dnpo's log-prob computation does not apply; use a model without it"
            )


def sum_by_row(token_values: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Sum per-token values (n,) into per-row totals (num_rows,) by row index (n,)."""
    totals = token_values.new_zeros(num_rows)
    return totals.index_add(0, rows, token_values)


class PreferenceModel(nn.Module):
    """Policy + frozen reference + optional noise head; `forward` returns the batch loss.

    Batches stack the B chosen rows before the B rejected rows (2B, T), see
    `PreferenceCollator`. The reference runs once per batch under no_grad; both NPO
    terms reuse its hidden states and logits.
    """

    def __init__(
        self,
        policy: nn.Module,
        reference: nn.Module | None,
        noise_head: NoiseHead | None,
        settings: LossSettings,
    ) -> None:
        super().__init__()
        if settings.mode == "dnpo" and noise_head is None:
            raise ValueError("mode dnpo needs a noise head")
        if settings.mode != "dnpo" and noise_head is not None:
            raise ValueError(f"mode {settings.mode} trains no noise head; pass noise_head=None")
        self.policy = policy
        self.reference = reference
        self.noise_head = noise_head
        self.settings = settings
        self.uses_lora = reference is None
        # FSDP's transformer auto-wrap policy reads the layer classes from here.
        self._no_split_modules = getattr(causal_lm(policy), "_no_split_modules", None)

    def train(self, mode: bool = True) -> PreferenceModel:
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        completion_mask: torch.Tensor,
        noise_seed: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Return the loss and per-pair diagnostics of one batch of 2B rows (T tokens)."""
        num_rows = input_ids.size(0)
        batch_size = num_rows // 2
        # Token t is predicted from position t - 1: drop the last position and the first label.
        labels = input_ids[:, 1:]
        mask = completion_mask[:, 1:].bool()  # (2B, T-1)
        rows = torch.arange(num_rows, device=input_ids.device).unsqueeze(1).expand_as(mask)[mask]
        token_labels = labels[mask]  # (n,)

        # Policy log-probs, summed over completion tokens: (2B,)
        hidden = self._hidden_states(causal_lm(self.policy), input_ids, attention_mask)[mask]
        logits = causal_lm(self.policy).get_output_embeddings()(hidden)
        policy_logps = sum_by_row(token_logps(logits, token_labels), rows, num_rows)
        del hidden, logits

        # Reference log-probs, and its hidden states and logits at rejected positions.
        with torch.no_grad(), self._reference_context():
            reference = self._reference_lm()
            ref_hidden = self._hidden_states(reference, input_ids, attention_mask)[mask]
            ref_logits = reference.get_output_embeddings()(ref_hidden)
            ref_logps = sum_by_row(token_logps(ref_logits, token_labels), rows, num_rows)
        rejected = rows >= batch_size
        rejected_rows = rows[rejected] - batch_size
        ref_hidden, ref_logits = ref_hidden[rejected], ref_logits[rejected]

        policy_chosen_logps, policy_rejected_logps = policy_logps.split(batch_size)
        ref_chosen_logps, ref_rejected_logps = ref_logps.split(batch_size)
        outputs = {
            "policy_chosen_logps": policy_chosen_logps.detach(),
            "policy_rejected_logps": policy_rejected_logps.detach(),
            "ref_chosen_logps": ref_chosen_logps,
            "ref_rejected_logps": ref_rejected_logps,
        }
        if self.settings.mode in ("spin", "dpo"):
            losses, chosen_rewards, rejected_rewards = sigmoid_preference_loss(
                policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                self.settings.beta,
            )
            outputs.update(loss=losses.mean(), model_loss=losses.mean().detach())
        else:
            noisy = noisy_rejected_logps(
                ref_hidden, ref_logits, token_labels[rejected], SeededNoise(noise_seed),
                self.settings.chunk_size, noise_head=self.noise_head,
                log_std_max=self.settings.log_std_max,
                fixed_std=None if self.noise_head is not None else self.settings.fixed_std,
            )
            model_noisy = sum_by_row(noisy.model_token_logps, rejected_rows, batch_size)
            outputs.update(
                noisy_ref_rejected_logps=model_noisy,
                noise_std_mean=noisy.std_mean,
                noise_std_max=noisy.std_max,
            )
            if self.noise_head is None:
                losses, chosen_rewards, rejected_rewards = sigmoid_preference_loss(
                    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, model_noisy,
                    self.settings.beta,
                )
                outputs.update(loss=losses.mean(), model_loss=losses.mean().detach())
            else:
                noise_noisy = sum_by_row(noisy.noise_token_logps, rejected_rows, batch_size)
                terms = npo_loss(
                    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, model_noisy,
                    noise_noisy, noisy.variance_mean, self.settings.beta, self.settings.alpha,
                )
                chosen_rewards, rejected_rewards = terms.chosen_rewards, terms.rejected_rewards
                outputs.update(
                    loss=terms.loss,
                    model_term=terms.model_term,
                    noise_term=terms.noise_term,
                    model_loss=terms.model_losses.mean().detach(),
                    noise_loss=terms.noise_losses.mean().detach(),
                    variance_penalty=terms.variance_penalty.detach(),
                )
        outputs.update(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
        return outputs

    @staticmethod
    def _hidden_states(
        model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Return the final hidden states at positions 0..T-2: (2B, T-1, d)."""
        backbone = model.base_model
        output = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return output.last_hidden_state[:, :-1]

    def _reference_lm(self) -> nn.Module:
        return causal_lm(self.policy) if self.uses_lora else self.reference

    def _reference_context(self) -> Any:
        return self.policy.disable_adapter() if self.uses_lora else nullcontext()

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the policy's layer activations in backward (non-reentrant checkpoint)."""
        lm = causal_lm(self.policy)
        kwargs = {"use_reentrant": False}
        if hasattr(lm, "activation_checkpointing_enable"):
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def build_preference_model(
    policy: nn.Module,
    config: TrainConfig,
    noise_head_state: dict[str, torch.Tensor] | None = None,
) -> PreferenceModel:
    """Turn a freshly loaded causal LM into a PreferenceModel for `config.mode`.

    Dropout is disabled in the policy before the reference is copied, so both run
    without it. LoRA adapters (lora_r > 0) keep their own `lora_dropout`.
    """
    check_logit_transforms(policy)
    disable_dropout(policy)
    if config.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        targets = config.lora_target_modules
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
            task_type="CAUSAL_LM",
        )
        policy = get_peft_model(policy, lora)
        reference = None
    else:
        reference = copy.deepcopy(policy)
        reference.requires_grad_(False)
        reference.eval()

    noise_head = None
    if config.mode == "dnpo":
        head_weight = causal_lm(policy).get_output_embeddings().weight
        vocab_size, hidden_size = head_weight.shape
        noise_head = NoiseHead(hidden_size, vocab_size, config.noise_init_std).to(head_weight.device)
        if noise_head_state is not None:
            noise_head.load_state_dict(noise_head_state)
    elif noise_head_state is not None:
        raise ValueError(f"mode {config.mode} has no noise head, so a noise head to start from is invalid")

    model = PreferenceModel(policy, reference, noise_head, LossSettings.from_config(config))
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model
