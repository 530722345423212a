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
        steps = [{"step": 1, "grad_norm": 2.0, "rewards/margins": 0.5},
                 {"step": 2, "grad_norm": 4.0, "rewards/margins": 1.5}]
        if run_dir.name == "dnpo":
            for step, shift in zip(steps, (-1.0, -3.0), strict=True):
                step.update({"noise/std_max": 1.0, "noise/ref_rejected_logps_shift": shift})
        write_jsonl(iter_dir / "train" / "train_log.jsonl", steps)
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
    assert "[min, max] over 2 seeds." in text
    # Step metrics of iteration 1: the mean of steps 1 and 2, equal in both seeds.
    assert "| dnpo | 1 | 1.00 | 3.00 | 1.00 | -2.00 |" in text
    assert "| spin | 1 | 1.00 | 3.00 | - | - |" in text
    assert "| dnpo | 0 |" not in text
    assert plot.stat().st_size > 0


def test_single_seed_tables_name_seed(tmp_path):
    pytest.importorskip("matplotlib")
    summarize = load_script("summarize_results")
    fake_run(tmp_path / "seed3" / "spin", [0.5, 0.5], [{"p1", "p2"}, {"p1", "p2"}])
    fake_run(tmp_path / "seed3" / "dnpo", [0.5, 0.75], [{"p1", "p2"}, {"p1", "p2", "p3"}])
    tables, plot = tmp_path / "tables.md", tmp_path / "accuracy.png"

    assert summarize.main(["--runs", str(tmp_path), "--tables", str(tables), "--plot", str(plot)]) == 0

    text = tables.read_text()
    assert "Held-out accuracy in points, seed 3." in text
    assert "| dnpo | 25.0 | 50.0 | 75.0 |" in text
    assert "over seeds" not in text
    assert "±" not in text


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


def finish_iteration_zero(run_dir: Path) -> None:
    manifest = run_dir / "iter_0" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    stages = {stage: {"status": "done"} for stage in ("generate", "label", "train", "evaluate")}
    manifest.write_text(json.dumps({"stages": stages}))
    (run_dir / "iter_0" / "model.safetensors").write_bytes(b"weights")


def test_iteration_zero_from_earlier_runs(tmp_path, monkeypatch):
    run_results = load_script("run_results")
    earlier = tmp_path / "default"
    finish_iteration_zero(earlier / "seed1" / "spin")
    calls = []
    monkeypatch.setattr(run_results, "run_logged", lambda *args: calls.append(args) or 0.0)
    out = tmp_path / "sweep"
    args = run_results.parse_args(["--config", "c.yaml", "--out", str(out), "--methods", "dnpo",
                                   "--iteration-zero-from", str(earlier)])

    assert run_results.run_seed(args, 1) == ["dnpo"]
    assert calls == []
    copied = out / "seed1" / "spin" / "iter_0" / "model.safetensors"
    assert copied.stat().st_ino == (earlier / "seed1" / "spin" / "iter_0" / "model.safetensors").stat().st_ino

    # A seed the earlier folder never ran is an error that names the folder to fill first.
    with pytest.raises(RuntimeError, match=r"seed2/spin has no finished iteration 0"):
        run_results.run_seed(args, 2)


def test_failed_run_reports_last_log_line(tmp_path):
    run_results = load_script("run_results")
    command = [sys.executable, "-c", "import sys; print('working'); print('dnpo run: error: bad value'); sys.exit(2)"]
    with pytest.raises(RuntimeError, match="status 2: dnpo run: error: bad value"):
        run_results.run_logged(command, tmp_path / "run.log", threads=1)


def fake_results_run(run_dir: Path, start_model: Path, trained: dict[int, Path]) -> None:
    """A run folder as run_results.py leaves it: config, task files and iteration manifests."""
    from dnpo.tasks.arithmetic import write_task

    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(
        "task: {train_size: 4, eval_size: 4}\ngeneration: {batch_size: 4}\nloop: {eval_max_new_tokens: 4}\n"
    )
    write_task(run_dir / "task", train_size=4, eval_size=4)
    (run_dir / "iter_0").mkdir()
    (run_dir / "iter_0" / "manifest.json").write_text(json.dumps({"start_model": str(start_model)}))
    for iteration, model in trained.items():
        (run_dir / f"iter_{iteration}").mkdir(exist_ok=True)
        (run_dir / f"iter_{iteration}" / "train").symlink_to(model, target_is_directory=True)


def test_heldout_eval_decodes_distinct_models_once(tmp_path):
    from dnpo.io import read_jsonl
    from dnpo.testing import save_tiny_model

    heldout_eval = load_script("heldout_eval")
    start, other = save_tiny_model(tmp_path / "start", seed=0), save_tiny_model(tmp_path / "other", seed=1)
    runs = tmp_path / "runs"
    # spin's first model is the start model again; dnpo's differs.
    fake_results_run(runs / "seed0" / "spin", start, {0: start})
    fake_results_run(runs / "seed0" / "dnpo", start, {0: other})
    tables = tmp_path / "tables.md"

    # A model still in training (no weights yet) is skipped, not an error.
    (runs / "seed0" / "dnpo" / "iter_1" / "train").mkdir(parents=True)

    assert heldout_eval.main(["--runs", str(runs), "--size", "6", "--models", "0", "1", "2",
                              "--workers", "1", "--tables", str(tables)]) == 0

    out = runs / "heldout_6"
    problems = read_jsonl(out / "problems.jsonl")
    seen = {row["question"] for name in ("train", "eval")
            for row in read_jsonl(runs / "seed0" / "spin" / "task" / f"{name}.jsonl")}
    assert len(problems) == 6
    assert not seen & {row["question"] for row in problems}
    # problems.jsonl, then one generations file for the start model and one for dnpo's M_1.
    assert len(list(out.glob("*.jsonl"))) == 3
    text = tables.read_text()
    assert "| spin |" in text
    assert "| dnpo |" in text
    assert "| dnpo | M_1 |" in text
    assert "| dnpo | M_2 |" not in text
    assert "[min, max] over 1 seed." in text


def test_heldout_eval_missing_runs_creates_nothing(tmp_path):
    heldout_eval = load_script("heldout_eval")
    runs = tmp_path / "missing"
    with pytest.raises(SystemExit, match="no runs under"):
        heldout_eval.main(["--runs", str(runs), "--size", "4"])
    assert not runs.exists()
