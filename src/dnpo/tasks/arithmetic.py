"""The bundled task: seeded arithmetic word problems with human-style references.

Each problem has a gold answer and a reference solution that ends in `#### N`, the
GSM8K convention. A configurable share of training references is flawed, the way
crowd-written SFT data is: a wrong result, a refusal, or reasoning that never states
a final answer. Held-out problems always have clean references. Rows are written in
the GSM8K layout (`question`, `answer`), so the GSM8K loader and verifier read them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dnpo.io import atomic_write_text

ANSWER_INSTRUCTION = "Solve it step by step and end with '#### <number>'."

NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jonas",
         "Kemi", "Liam", "Maya", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sam", "Tariq"]
ITEMS = ["apples", "marbles", "stickers", "pencils", "cookies", "stamps", "shells", "books",
         "cards", "balloons", "coins", "beads"]
CONTAINERS = ["box", "bag", "jar", "basket", "crate", "tray"]

REFUSALS = [
    "I'm not sure how to solve this one.",
    "Sorry, I can't help with that question.",
    "This problem does not give enough information to answer.",
]


@dataclass(frozen=True)
class Problem:
    question: str
    steps: list[str]
    answer: int


def _add(rng: random.Random) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(5, 60), rng.randint(3, 40)
    return Problem(
        f"{name} has {a} {item}. {name} gets {b} more {item}. How many {item} does {name} have now?",
        [f"{name} starts with {a} {item} and gets {b} more, so {a} + {b} = {a + b}."],
        a + b,
    )


def _subtract(rng: random.Random) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a = rng.randint(20, 90)
    b = rng.randint(2, a - 5)
    return Problem(
        f"{name} had {a} {item} and gave away {b} of them. How many {item} are left?",
        [f"{name} had {a} {item} and gave away {b}, so {a} - {b} = {a - b} are left."],
        a - b,
    )


def _multiply(rng: random.Random) -> Problem:
    item, container = rng.choice(ITEMS), rng.choice(CONTAINERS)
    per, count = rng.randint(2, 12), rng.randint(2, 9)
    return Problem(
        f"Each {container} holds {per} {item}. How many {item} are in {count} {container}s?",
        [f"There are {count} {container}s with {per} {item} each, so {count} * {per} = {count * per}."],
        count * per,
    )


def _two_step(rng: random.Random) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(10, 50), rng.randint(2, 20)
    c = rng.randint(2, a + b - 2)
    total = a + b
    return Problem(
        f"{name} has {a} {item}, buys {b} more, then gives {c} to a friend. "
        f"How many {item} does {name} have now?",
        [
            f"After buying, {name} has {a} + {b} = {total} {item}.",
            f"After giving {c} away, {name} has {total} - {c} = {total - c}.",
        ],
        total - c,
    )


def _share(rng: random.Random) -> Problem:
    item = rng.choice(ITEMS)
    people, each = rng.randint(2, 8), rng.randint(2, 12)
    total = people * each
    return Problem(
        f"{total} {item} are shared equally among {people} children. How many {item} does each child get?",
        [f"Each child gets {total} / {people} = {each} {item}."],
        each,
    )


GENERATORS: list[Callable[[random.Random], Problem]] = [_add, _subtract, _multiply, _two_step, _share]


def clean_reference(problem: Problem) -> str:
    return "\n".join(problem.steps) + f"\n#### {problem.answer}"


def flawed_reference(problem: Problem, rng: random.Random) -> tuple[str, str]:
    """Return a flawed reference and its kind: wrong_result, refusal or no_final_answer."""
    kind = rng.choice(["wrong_result", "refusal", "no_final_answer"])
    if kind == "refusal":
        return rng.choice(REFUSALS), kind
    if kind == "no_final_answer":
        first = problem.steps[0]
        cut = first.rsplit(" so ", 1)[0] if " so " in first else first.rsplit("=", 1)[0]
        return cut.rstrip(" ,.") + ", and then we can work out the rest.", kind
    wrong = problem.answer + rng.choice([-10, -3, -2, -1, 1, 2, 3, 10])
    if wrong < 0:
        wrong = problem.answer + 4
    steps = [s.replace(f"= {problem.answer}", f"= {wrong}") for s in problem.steps]
    return "\n".join(steps) + f"\n#### {wrong}", kind


def make_rows(count: int, seed: int, flawed_share: float, split: str) -> list[dict]:
    """Make `count` problems; `flawed_share` of them get a flawed reference."""
    if not 0 <= flawed_share <= 1:
        raise ValueError(f"flawed_share must be in [0, 1], got {flawed_share}")
    rng = random.Random(f"{seed}:{split}")
    rows, seen = [], set()
    while len(rows) < count:
        problem = rng.choice(GENERATORS)(rng)
        if problem.question in seen:
            continue
        seen.add(problem.question)
        reference, flaw = clean_reference(problem), None
        if rng.random() < flawed_share:
            reference, flaw = flawed_reference(problem, rng)
        rows.append({
            "id": f"{split}-{len(rows):05d}",
            "question": f"{problem.question} {ANSWER_INSTRUCTION}",
            "answer": reference,
            "gold_answer": str(problem.answer),
            "flaw": flaw,
        })
    return rows


def write_task(
    folder: str | Path, train_size: int, eval_size: int, flawed_share: float = 0.3, seed: int = 0
) -> tuple[Path, Path]:
    """Write train.jsonl (with flawed references) and a clean, disjoint eval.jsonl."""
    folder = Path(folder)
    train = make_rows(train_size, seed, flawed_share, "train")
    train_questions = {row["question"] for row in train}
    held_out = [r for r in make_rows(eval_size * 2, seed, 0.0, "eval") if r["question"] not in train_questions]
    held_out = held_out[:eval_size]
    paths = folder / "train.jsonl", folder / "eval.jsonl"
    for path, rows in zip(paths, (train, held_out), strict=True):
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        # A resumed run finds identical files; leaving them untouched keeps their timestamps.
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)
    return paths
