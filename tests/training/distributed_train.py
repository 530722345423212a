"""Run `train()` in every process of `accelerate launch`, then save each rank's parameters.

Usage: accelerate launch --multi_gpu --num_processes 2 distributed_train.py MODEL_DIR OUTPUT_DIR
"""

import sys
from pathlib import Path

from safetensors.torch import save_file

import dnpo.training.trainer as trainer_module
from dnpo.training import TrainConfig, train

trainers = []
original_init = trainer_module.NPOTrainer.__init__


def recording_init(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    trainers.append(self)


trainer_module.NPOTrainer.__init__ = recording_init

rows = [{"id": f"p{i}", "prompt": f"Echo {i}", "chosen": f"{i}", "rejected": f"{i + 1}{i}"} for i in range(8)]
config = TrainConfig(mode="dnpo", max_steps=3, per_device_batch_size=2, learning_rate=1e-3,
                     noise_learning_rate=1e-2, warmup_ratio=0.0, max_length=64, max_prompt_length=40,
                     noise_chunk_size=8)
model_dir, output_dir = sys.argv[1], Path(sys.argv[2])
result = train(rows, model_dir, output_dir, config)

trainer = trainers[-1]
model = trainer.accelerator.unwrap_model(trainer.model)
params = {
    name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().contiguous()
    for name, p in model.named_parameters()
    if p.requires_grad
}
metadata = {
    "world_size": str(trainer.args.world_size),
    "steps": str(result.steps),
    "fsdp": str(trainer.is_fsdp_enabled),
    "parameter_type": type(next(model.parameters())).__name__,
}
save_file(params, str(output_dir / f"params-rank{trainer.args.process_index}.safetensors"), metadata)
