import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dnpo.io import read_jsonl
from dnpo.testing import save_tiny_model

SCRIPT = Path(__file__).with_name("distributed_train.py")


def test_two_cpu_processes_keep_identical_parameters(tmp_path):
    """DDP with the gloo backend on CPU: both ranks end with the same policy and noise head.

    accelerate 1.16 runs `launch --cpu --num_processes 2` as a single process unless
    mpirun is set up, so this launches torchrun through `--multi_gpu` with CUDA hidden,
    which starts two CPU processes.
    """
    model_dir = save_tiny_model(tmp_path / "model")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(SCRIPT), str(model_dir), str(tmp_path / "out")]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        with safe_open(str(tmp_path / "out" / f"params-rank{rank}.safetensors"), "pt") as handle:
            assert handle.metadata()["world_size"] == "2"
    # 3 steps x 2 pairs x 2 ranks cover all 8 pairs; one process alone would see 6.
    assert len(read_jsonl(tmp_path / "out" / "logps.jsonl")) == 8

    rank0 = load_file(str(tmp_path / "out" / "params-rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "out" / "params-rank1.safetensors"))
    assert rank0.keys() == rank1.keys()
    assert any(key.startswith("noise_head.") for key in rank0)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key

    start = load_file(str(model_dir / "model.safetensors"))
    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert not torch.equal(start["lm_head.weight"], saved["lm_head.weight"])
    assert torch.equal(saved["lm_head.weight"], rank0["policy.lm_head.weight"])
    assert torch.equal(load_file(str(tmp_path / "out" / "noise_head.safetensors"))["weight"],
                       rank0["noise_head.weight"])
