"""Run DNPO, SPIN and the ablations side by side for several seeds; resumable.

For each seed the script first runs iteration 0 once (plain SPIN, the same for every
method) in `OUT/seedS/spin`. Every other method's run starts with a hard-linked copy of
that iteration, so all methods of one seed share the model M_1, and then runs
iterations 1..N-1 with its own labels and loss:

    spin        human reference chosen, no noise
    spin+dsl    judge labels (dynamic sample labeling), no noise
    spin+npo    human reference chosen, trainable noise
    dnpo        judge labels and trainable noise
    dnpo-fixed  judge labels and fixed N(0, 0.5) noise

Runs are plain `dnpo run` invocations (one subprocess each, `--workers` at a time), so
rerunning the same command resumes every unfinished run where it stopped.

    python experiments/run_results.py --config configs/default.yaml --out experiments/runs/default
    python experiments/run_results.py --config configs/gsm8k.yaml --seeds 0 --iterations 2 \\
        --out experiments/runs/gsm8k

A sweep over a setting that iteration 0 does not use (it trains plain SPIN) can reuse the
iteration 0 of an earlier run with `--iteration-zero-from`:

    python experiments/run_results.py --config configs/default.yaml --methods dnpo \\
        --iteration-zero-from experiments/runs/default --set train.eps_max=4 \\
        --out experiments/runs/eps_max4
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

# prctl option that sets the signal a child process gets when its parent dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1

METHODS = {
    "spin": ["loop.method=spin"],
    "spin+dsl": ["loop.method=spin+dsl"],
    "spin+npo": ["loop.method=spin+npo", "train.mode=dnpo"],
    "dnpo": ["loop.method=dnpo", "train.mode=dnpo"],
    "dnpo-fixed": ["loop.method=dnpo", "train.mode=fixed-noise"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="dnpo run config (YAML)")
    parser.add_argument("--out", required=True, help="folder for the runs: OUT/seedS/METHOD")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="values of loop.seed, one repeat each (default: 0 1 2)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                        help="methods to run (default: all five)")
    parser.add_argument("--iterations", type=int, default=4,
                        help="iterations per run, iteration 0 included (default: 4)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every run (repeatable)")
    parser.add_argument("--iteration-zero-from", metavar="DIR",
                        help="take each seed's finished iteration 0 from DIR/seedS/spin (an earlier "
                             "--out) instead of running it; for sweeps whose --set values leave "
                             "iteration 0 unchanged, such as noise or judge settings")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (default: 2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads per run (OMP_NUM_THREADS); default 1, so that "
                             "--workers runs share the cores without waiting on each other")
    return parser.parse_args(argv)


def dnpo_command(args: argparse.Namespace, seed: int, method: str, iterations: int) -> list[str]:
    overrides = [
        f"loop.seed={seed}",
        f"loop.output_dir={Path(args.out) / f'seed{seed}'}",
        f"loop.name={method}",
        f"loop.iterations={iterations}",
        "loop.report=false",
        *METHODS[method],
        *args.overrides,
    ]
    command = [sys.executable, "-m", "dnpo.cli", "run", "--config", args.config]
    for override in overrides:
        command += ["--set", override]
    return command


def run_logged(command: list[str], log_path: Path, threads: int) -> float:
    """Run one `dnpo run` with its output appended to log_path; return minutes taken."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False,
                                   preexec_fn=stop_with_parent)
    minutes = (time.monotonic() - started) / 60
    if completed.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited with status {completed.returncode}: {last_line(log_path)} "
            f"(full output in {log_path})"
        )
    return minutes


def stop_with_parent() -> None:
    """Ask Linux to send SIGTERM to the child when this script dies, so a rerun finds no stale lock."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the child outlives a killed parent, and a rerun waits for its lock
        pass


def last_line(path: Path) -> str:
    """Return the last non-empty line of a log, where `dnpo run` writes its one-line error."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [line for line in lines if line]
    return lines[-1] if lines else "(empty log)"


def link_weights(source: str, target: str) -> None:
    """Hard-link weight files, which no stage rewrites; copy every other file."""
    if source.endswith(".safetensors"):
        os.link(source, target)
    else:
        shutil.copy2(source, target)


def share_iteration_zero(base_run: Path, run_dir: Path) -> None:
    """Give run_dir a copy of the base run's finished iteration 0 and task files.

    Weight files are hard-linked to save disk space; other files are copied, so stages
    that append to a file never change the base run.
    """
    if (run_dir / "iter_0").exists():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("task", "iter_0"):
        source = base_run / name
        if source.exists():
            staging = run_dir / f".{name}.copying"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(source, staging, copy_function=link_weights)
            staging.rename(run_dir / name)


def iteration_zero_done(run_dir: Path) -> bool:
    manifest = run_dir / "iter_0" / "manifest.json"
    if not manifest.exists():
        return False
    stages = json.loads(manifest.read_text(encoding="utf-8")).get("stages", {})
    return all(stages.get(stage, {}).get("status") == "done"
               for stage in ("generate", "label", "train", "evaluate"))


def run_seed(args: argparse.Namespace, seed: int) -> list[str]:
    """Run iteration 0 once for this seed and return the methods to run next."""
    seed_dir = Path(args.out) / f"seed{seed}"
    base = seed_dir / "spin"
    if args.iteration_zero_from and not iteration_zero_done(base):
        source = Path(args.iteration_zero_from) / f"seed{seed}" / "spin"
        if not iteration_zero_done(source):
            raise RuntimeError(f"--iteration-zero-from: {source} has no finished iteration 0; "
                               f"run experiments/run_results.py with --out {args.iteration_zero_from} first")
        shutil.rmtree(base, ignore_errors=True)
        share_iteration_zero(source, base)
        print(f"seed {seed}: iteration 0 taken from {source}", flush=True)
    if not iteration_zero_done(base):
        print(f"seed {seed}: iteration 0 (SPIN, shared by all methods)", flush=True)
        minutes = run_logged(dnpo_command(args, seed, "spin", 1), seed_dir / "spin.log", args.threads)
        print(f"seed {seed}: iteration 0 finished in {minutes:.1f} min", flush=True)
    if not iteration_zero_done(base):
        raise RuntimeError(f"iteration 0 of {base} is not finished; see {seed_dir / 'spin.log'}")
    return list(args.methods)


def run_method(args: argparse.Namespace, seed: int, method: str) -> str:
    seed_dir = Path(args.out) / f"seed{seed}"
    run_dir = seed_dir / method
    if method != "spin":
        share_iteration_zero(seed_dir / "spin", run_dir)
    minutes = run_logged(dnpo_command(args, seed, method, args.iterations),
                         seed_dir / f"{method}.log", args.threads)
    return f"seed {seed} {method}: {minutes:.1f} min"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    failures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.workers) as pool:
        bases = {pool.submit(run_seed, args, seed): seed for seed in args.seeds}
        jobs = {}
        for future in concurrent.futures.as_completed(bases):
            seed = bases[future]
            try:
                methods = future.result()
            except RuntimeError as error:
                failures.append(str(error))
                continue
            for method in methods:
                jobs[pool.submit(run_method, args, seed, method)] = (seed, method)
        for future in concurrent.futures.as_completed(jobs):
            try:
                print(future.result(), flush=True)
            except RuntimeError as error:
                failures.append(str(error))
    print(f"All runs took {(time.monotonic() - started) / 60:.1f} min", flush=True)
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
