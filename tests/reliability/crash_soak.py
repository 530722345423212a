"""Crash soak: SIGKILL a tiny `dnpo run` in every stage, resume it, compare with a clean run.

The killed run gets `DNPO_TEST_KILL_AT=SUFFIX:N[:before]` (see `dnpo.io`), so the process
kills itself at its N-th write to the named file: after the write, or in the middle of
it (half a JSONL line on disk, or an atomic write's temporary file not yet renamed).
The kill plan visits every stage of both iterations in order (generate, label, train,
evaluate at iteration 0; generate, judge, label, train, evaluate at iteration 1) and
then adds random extra kills in random stages. Each kill point is drawn at random
from the writes that the next process still has to make in that stage. After the
last kill the run is resumed to the end, and its records, checkpoints and metrics
must equal those of an uninterrupted run with the same seed.

A second copy of the run is killed from outside at random times instead (a random
0-1.5 s after each process starts one of 5 randomly drawn stages), so kills also
land between writes: inside model saving, Trainer checkpoints or manifest updates.

Usage: python tests/reliability/crash_soak.py [--kills 10] [--random-kills 5] [--seed 0]
       [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_run import (  # noqa: E402
    EVAL_SIZE,
    TRAIN_SIZE,
    TRAIN_STEPS,
    duplicate_ids,
    make_model,
    run_artifacts,
    run_dnpo,
    subprocess_env,
    tiny_run_config,
    write_config,
)

from dnpo.io import KILL_AT_ENV, read_json, read_jsonl  # noqa: E402

STAGES = {
    0: ("generate", "label", "train", "evaluate"),
    1: ("generate", "judge", "label", "train", "evaluate"),
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
SIGKILL_STATUS = -9


@dataclass
class Kill:
    """One planned kill: the stage it targets and the write it happens at."""

    iteration: int
    stage: str
    file: str
    count: int
    mode: str
    landed_stage: str = ""
    returncode: int | None = None

    @property
    def spec(self) -> str:
        return f"iter_{self.iteration}/{self.file}:{self.count}:{self.mode}"


@dataclass
class SoakResult:
    kills: list[Kill] = field(default_factory=list)
    seconds: float = 0.0
    records_compared: int = 0
    mismatches: list[str] = field(default_factory=list)
    duplicates: dict[str, list[Any]] = field(default_factory=dict)
    torn_files: list[str] = field(default_factory=list)
    pickle_files: list[str] = field(default_factory=list)
    leftover_temp_files: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        """Whether the resumed run equals the clean run, with no duplicate, torn or pickle file."""
        return not (self.mismatches or self.duplicates or self.torn_files or self.pickle_files)

    @property
    def kills_landed(self) -> bool:
        """Whether every process was killed, in the stage that its kill targeted."""
        return all(
            kill.returncode == SIGKILL_STATUS and kill.landed_stage == kill.stage
            for kill in self.kills
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["intact"] = self.intact
        data["kills_landed"] = self.kills_landed
        data["stages_killed"] = sorted({f"iter_{k.iteration}/{k.stage}" for k in self.kills})
        return data


def plan_stages(kills: int, rng: random.Random) -> list[tuple[int, str]]:
    """Every stage of both iterations once, in run order, plus random extra stages.

    An extra kill goes right after the first kill of its stage, because a stage that
    has finished cannot be killed again.
    """
    ordered = [(iteration, stage) for iteration in (0, 1) for stage in STAGES[iteration]]
    extras = [rng.choice(ordered) for _ in range(max(0, kills - len(ordered)))]
    plan = []
    for target in ordered:
        plan.append(target)
        plan.extend(extra for extra in extras if extra == target)
    return plan[:kills] if kills < len(ordered) else plan


def records_left(path: Path, total: int) -> int:
    """Records a resumed stage still has to write to a JSONL file of `total` records."""
    return total - len(read_jsonl(path)) if path.exists() else total


def last_checkpoint_step(train_dir: Path) -> int:
    """Step of the newest complete resumable checkpoint, 0 without one."""
    steps = [
        int(path.name.split("-")[1])
        for path in train_dir.glob("checkpoint-*")
        if (path / "trainer_state.json").is_file()
    ]
    return max(steps, default=0)


def kill_points(
    run_dir: Path, iteration: int, stage: str
) -> list[tuple[str, int, tuple[str, ...]]]:
    """List (file under iter_K, N, modes) for the writes the next process makes in `stage`."""
    iter_dir = run_dir / f"iter_{iteration}"
    both = ("after", "before")
    if stage == "generate":
        left = records_left(iter_dir / "generations.jsonl", TRAIN_SIZE)
        return [("generations.jsonl", n, both) for n in range(1, left + 1)]
    if stage == "judge":
        left = records_left(iter_dir / "judgments.jsonl", TRAIN_SIZE)
        return [("judgments.jsonl", n, both) for n in range(1, left + 1)]
    if stage == "label":
        return [("pairs.jsonl", 1, both), ("labels.json", 1, both)]
    if stage == "train":
        done = last_checkpoint_step(iter_dir / "train")
        points = [("train/train_log.jsonl", n, both) for n in range(1, TRAIN_STEPS - done + 1)]
        # A kill here leaves checkpoint-N with its weights but without optimizer state.
        points += [
            (f"train/checkpoint-{step}/dnpo_train_config.json", 1, ("after",))
            for step in range(done + 1, TRAIN_STEPS + 1)
        ]
        points += [("train/logps.jsonl", 1, both), ("train/train_result.json", 1, both)]
        return points
    points = []
    if iteration == 0:
        left = records_left(iter_dir / "start_eval_generations.jsonl", EVAL_SIZE)
        points += [("start_eval_generations.jsonl", n, both) for n in range(1, left + 1)]
    left = records_left(iter_dir / "eval_generations.jsonl", EVAL_SIZE)
    points += [("eval_generations.jsonl", n, both) for n in range(1, left + 1)]
    return points + [("eval.json", 1, both)]


def choose_kill(run_dir: Path, iteration: int, stage: str, rng: random.Random) -> Kill:
    file, count, modes = rng.choice(kill_points(run_dir, iteration, stage))
    return Kill(iteration, stage, file, count, rng.choice(modes))


def running_stage(run_dir: Path) -> str:
    """Return `iter_K/stage` of the stage marked running in a manifest, or ''."""
    for manifest in sorted(run_dir.glob("iter_*/manifest.json")):
        for stage, entry in read_json(manifest)["stages"].items():
            if entry.get("status") == "running":
                return f"{manifest.parent.name}/{stage}"
    return ""


def check_run_dir(run_dir: Path, result: SoakResult) -> None:
    """Record duplicate ids, torn JSONL files, pickle files and leftover temporary files."""
    for path in sorted(run_dir.rglob("*.jsonl")):
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            result.torn_files.append(str(path.relative_to(run_dir)))
        records = read_jsonl(path)
        key = "step" if path.name == "train_log.jsonl" else "id"
        if records and key in records[0]:
            duplicates = duplicate_ids(records, key)
            if duplicates:
                result.duplicates[str(path.relative_to(run_dir))] = duplicates
    for path in sorted(run_dir.rglob("*")):
        relative = str(path.relative_to(run_dir))
        if path.suffix in PICKLE_SUFFIXES:
            result.pickle_files.append(relative)
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            result.leftover_temp_files.append(relative)


def compare(expected: dict[str, Any], actual: dict[str, Any], result: SoakResult) -> None:
    for key in sorted(set(expected) | set(actual)):
        if key not in actual:
            result.mismatches.append(f"{key}: missing after the kills")
        elif key not in expected:
            result.mismatches.append(f"{key}: absent from the uninterrupted run")
        elif expected[key] != actual[key]:
            result.mismatches.append(f"{key}: differs from the uninterrupted run")
        if isinstance(expected.get(key), list):
            result.records_compared += len(expected[key])


def clean_run(workdir: Path, timeout: float = 300) -> tuple[dict[str, Any], float]:
    """Run the tiny run without interruption; return its artifacts and wall seconds."""
    started = time.monotonic()
    model = make_model(workdir / "model")
    config = write_config(workdir / "clean.yaml", tiny_run_config(model, workdir / "clean"))
    done = run_dnpo(["run", "--config", str(config)], workdir, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"the uninterrupted run failed:\n{done.stderr[-3000:]}")
    return run_artifacts(workdir / "clean" / "tiny"), time.monotonic() - started


def finish_and_compare(
    workdir: Path,
    config: Path,
    run_dir: Path,
    expected: dict[str, Any],
    result: SoakResult,
    timeout: float = 300,
) -> None:
    """Resume the killed run to its end and check it against the uninterrupted run."""
    done = run_dnpo(["run", "--config", str(config)], workdir, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"the final resume failed:\n{done.stderr[-3000:]}")
    check_run_dir(run_dir, result)
    compare(expected, run_artifacts(run_dir), result)


def soak_at_writes(
    workdir: Path, expected: dict[str, Any], kills: int = 10, seed: int = 0, timeout: float = 300
) -> SoakResult:
    """Kill the run at planned writes (`DNPO_TEST_KILL_AT`), resuming after each kill."""
    started = time.monotonic()
    rng = random.Random(seed)
    model = make_model(workdir / "model")
    config = write_config(workdir / "writes.yaml", tiny_run_config(model, workdir / "writes"))
    run_dir = workdir / "writes" / "tiny"
    result = SoakResult()
    for iteration, stage in plan_stages(kills, rng):
        kill = choose_kill(run_dir, iteration, stage, rng)
        env = subprocess_env(**{KILL_AT_ENV: kill.spec})
        done = run_dnpo(["run", "--config", str(config)], workdir, env=env, timeout=timeout)
        kill.returncode = done.returncode
        landed = running_stage(run_dir)
        prefix = f"iter_{iteration}/"
        kill.landed_stage = landed.removeprefix(prefix) if landed.startswith(prefix) else landed
        result.kills.append(kill)
        if done.returncode not in (SIGKILL_STATUS, 0):
            raise RuntimeError(f"run with {kill.spec} failed:\n{done.stderr[-3000:]}")
    finish_and_compare(workdir, config, run_dir, expected, result, timeout)
    result.seconds = round(time.monotonic() - started, 1)
    return result


def stage_entry(run_dir: Path, iteration: int, stage: str) -> dict[str, Any]:
    """Return a stage's manifest entry (status, attempts, seconds), empty before it starts."""
    manifest = run_dir / f"iter_{iteration}" / "manifest.json"
    return read_json(manifest)["stages"].get(stage, {}) if manifest.exists() else {}


def soak_at_random_times(
    workdir: Path,
    expected: dict[str, Any],
    kills: int = 5,
    max_delay: float = 1.5,
    seed: int = 0,
    timeout: float = 300,
) -> SoakResult:
    """SIGKILL the run from outside at random times, resuming after each kill.

    `kills` distinct stages are drawn and visited in run order. Each process is killed
    a random 0 to `max_delay` seconds after it starts the next drawn stage. So the kill lands at
    any instruction: inside the stage, in a later one, between two stages or while a
    manifest, model or Trainer checkpoint is written. A process that finishes first
    is not killed.
    """
    started = time.monotonic()
    rng = random.Random(seed)
    model = make_model(workdir / "model")
    config = write_config(workdir / "times.yaml", tiny_run_config(model, workdir / "times"))
    run_dir = workdir / "times" / "tiny"
    ordered = [(iteration, stage) for iteration in (0, 1) for stage in STAGES[iteration]]
    targets = sorted(rng.sample(range(len(ordered)), min(kills, len(ordered))))
    result = SoakResult()
    for number, index in enumerate(targets):
        # A stage that an earlier kill already carried past gives way to the next unfinished one.
        unfinished = [
            target
            for target in ordered[index:]
            if stage_entry(run_dir, *target).get("status") != "done"
        ]
        if not unfinished:
            break
        target = unfinished[0]
        attempts = stage_entry(run_dir, *target).get("attempts", 0)
        log = workdir / f"times-{number}.log"
        with open(log, "wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "dnpo.cli", "run", "--config", str(config)],
                cwd=workdir,
                env=subprocess_env(),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
            deadline = time.monotonic() + timeout
            while (
                process.poll() is None
                and stage_entry(run_dir, *target).get("attempts", 0) == attempts
            ):
                if time.monotonic() > deadline:
                    process.kill()
                    raise RuntimeError(f"iter_{target[0]}/{target[1]} never started; see {log}")
                time.sleep(0.02)
            delay = rng.uniform(0.0, max_delay)
            try:
                process.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
        landed = running_stage(run_dir)
        iteration, _, stage = landed.partition("/")
        kill = Kill(
            int(iteration.removeprefix("iter_") or -1),
            stage or "between stages",
            "",
            0,
            f"{delay:.2f} s after iter_{target[0]}/{target[1]} started",
            returncode=process.returncode,
        )
        kill.landed_stage = kill.stage
        result.kills.append(kill)
        if process.returncode not in (SIGKILL_STATUS, 0):
            raise RuntimeError(f"run {number} failed:\n{log.read_text(errors='replace')[-3000:]}")
    finish_and_compare(workdir, config, run_dir, expected, result, timeout)
    result.seconds = round(time.monotonic() - started, 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--kills", type=int, default=10, help="SIGKILLs at planned writes (default: 10)"
    )
    parser.add_argument(
        "--random-kills",
        type=int,
        default=5,
        help="SIGKILLs at random times, on a second copy of the run (default: 5)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill plan (default: 0)")
    parser.add_argument("--workdir", help="folder for the runs (default: a temporary folder)")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dnpo-soak-"))
    try:
        expected, run_seconds = clean_run(workdir)
        at_writes = soak_at_writes(workdir, expected, args.kills, args.seed)
        at_times = soak_at_random_times(workdir, expected, args.random_kills, seed=args.seed)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "clean_run_seconds": round(run_seconds, 1),
        "kills_at_writes": at_writes.to_dict(),
        "kills_at_random_times": at_times.to_dict(),
    }
    print(json.dumps(report, indent=2))
    return 0 if at_writes.intact and at_writes.kills_landed and at_times.intact else 1


if __name__ == "__main__":
    sys.exit(main())
