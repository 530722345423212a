"""The results experiment scripts: sharing iteration 0 and summarizing finished runs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def test_share_iteration_zero_links_weights_only(tmp_path):
    run_results = load_script("run_results")
    base = tmp_path / "seed0" / "spin"
    (base / "iter_0" / "train").mkdir(parents=True)
    (base / "iter_0" / "train" / "model.safetensors").write_bytes(b"weights")
    write_jsonl(base / "iter_0" / "generations.jsonl", [{"id": "a"}])
    write_jsonl(base / "task" / "train.jsonl", [{"id": "a"}])
    target = tmp_path / "seed0" / "dnpo"

    run_results.share_iteration_zero(base, target)

    weights = target / "iter_0" / "train" / "model.safetensors"
    generations = target / "iter_0" / "generations.jsonl"
    assert weights.stat().st_ino == (base / "iter_0" / "train" / "model.safetensors").stat().st_ino
    assert generations.read_text() == (base / "iter_0" / "generations.jsonl").read_text()
    assert generations.stat().st_ino != (base / "iter_0" / "generations.jsonl").stat().st_ino
    assert (target / "task" / "train.jsonl").is_file()
    assert not list(target.glob(".*copying"))

    # A second call keeps what the method's run has written since.
    write_jsonl(generations, [{"id": "changed"}])
    run_results.share_iteration_zero(base, target)
    assert "changed" in generations.read_text()


def test_dnpo_command_sets_method_and_seed(tmp_path):
    run_results = load_script("run_results")
    args = run_results.parse_args(["--config", "c.yaml", "--out", str(tmp_path), "--set", "task.train_size=8"])
    command = run_results.dnpo_command(args, seed=2, method="dnpo-fixed", iterations=3)
    settings = [command[i + 1] for i, part in enumerate(command) if part == "--set"]
    assert "loop.seed=2" in settings
    assert "train.mode=fixed-noise" in settings
    assert "loop.method=dnpo" in settings
    assert "loop.iterations=3" in settings
    assert settings[-1] == "task.train_size=8"


def fake_run(run_dir: Path, accuracies: list[float], correct_ids: list[set[str]]) -> None:
    """Write the files summarize_results reads for a run with len(accuracies) iterations."""
    rows = []
    for k, accuracy in enumerate(accuracies):
        rows.append({"iteration": k, "method": run_dir.name, "accuracy": accuracy,
                     "start_accuracy": 0.25 if k == 0 else None})
        iter_dir = run_dir / f"iter_{k}"
        prompt = [{"role": "user", "content": "q"}]
        write_jsonl(iter_dir / "eval_generations.jsonl", [
            {"id": i, "prompt": prompt, "gold_answer": "1",
             "generated": "#### 1" if i in correct_ids[k] else "#### 2"}
            for i in ("p1", "p2", "p3", "p4")
        ])
        write_jsonl(iter_dir / "generations.jsonl", [
            {"id": "t1", "prompt": prompt, "gold_answer": "5", "reference": "#### 4", "generated": "#### 5"},
            {"id": "t2", "prompt": prompt, "gold_answer": "5", "reference": "#### 5", "generated": "#### 5"},
        ])
        (iter_dir / "manifest.json").write_text(json.dumps({"stages": {"train": {"seconds": 60.0}}}))
    (run_dir / "summary.json").write_text(json.dumps({"rows": rows}))


def test_summarize_results_tables(tmp_path):
    pytest.importorskip("matplotlib")
    summarize = load_script("summarize_results")
    for seed, dnpo_last in ((0, 0.75), (1, 0.5)):
        fake_run(tmp_path / f"seed{seed}" / "spin", [0.5, 0.5], [{"p1", "p2"}, {"p1", "p2"}])
        fake_run(tmp_path / f"seed{seed}" / "dnpo", [0.5, dnpo_last],
                 [{"p1", "p2"}, {"p1", "p2", "p3"} if dnpo_last == 0.75 else {"p1", "p3"}])
    tables, plot = tmp_path / "tables.md", tmp_path / "accuracy.png"

    assert summarize.main(["--runs", str(tmp_path), "--tables", str(tables), "--plot", str(plot)]) == 0

    text = tables.read_text()
    assert "| dnpo | 25.0 ± 0.0 [25.0, 25.0] | 50.0 ± 0.0 [50.0, 50.0] | 62.5 ± 17.7 [50.0, 75.0] |" in text
    assert "| spin | 25.0 ± 0.0 [25.0, 25.0] | 50.0 ± 0.0 [50.0, 50.0] | 50.0 ± 0.0 [50.0, 50.0] |" in text
    # Training answers: t1 beats a wrong reference and t2 ties, for every run and iteration.
    assert "| dnpo | 1 | 4 | 100.0% | 50.0% | 50.0% | 0.0% |" in text
    # Head to head after iteration 1: seed 0 wins p3; seed 1 wins p3 and loses p2.
    assert "| 1 | 2 | 5 | 1 | 8 |" in text
    # Compute counts the shared iteration 0 once per seed: spin 2 x 2 min, dnpo 2 x 1 min.
    assert "6.0 min of stage wall time" in text
    assert plot.stat().st_size > 0


def test_rerun_skips_finished_iteration_zero(tmp_path, monkeypatch):
    run_results = load_script("run_results")
    manifest = tmp_path / "seed0" / "spin" / "iter_0" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    stages = {stage: {"status": "done"} for stage in ("generate", "label", "train", "evaluate")}
    manifest.write_text(json.dumps({"stages": stages}))
    calls = []
    monkeypatch.setattr(run_results, "run_logged", lambda *args: calls.append(args) or 0.0)
    args = run_results.parse_args(["--config", "c.yaml", "--out", str(tmp_path), "--methods", "dnpo"])

    assert run_results.run_seed(args, 0) == ["dnpo"]
    assert calls == []


def test_failed_run_reports_last_log_line(tmp_path):
    run_results = load_script("run_results")
    command = [sys.executable, "-c", "import sys; print('working'); print('dnpo run: error: bad value'); sys.exit(2)"]
    with pytest.raises(RuntimeError, match="status 2: dnpo run: error: bad value"):
        run_results.run_logged(command, tmp_path / "run.log", threads=1)
