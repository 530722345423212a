import re

from dnpo.io import read_jsonl
from dnpo.tasks.arithmetic import make_rows, write_task


def test_rows_are_seeded_and_unique():
    first = make_rows(50, seed=3, flawed_share=0.3, split="train")
    again = make_rows(50, seed=3, flawed_share=0.3, split="train")
    assert first == again
    assert len({row["question"] for row in first}) == 50


def test_clean_references_end_with_gold_answer():
    for row in make_rows(100, seed=1, flawed_share=0.0, split="eval"):
        assert row["flaw"] is None
        assert row["answer"].endswith(f"#### {row['gold_answer']}")


def test_flawed_share_and_kinds():
    rows = make_rows(400, seed=0, flawed_share=0.3, split="train")
    flawed = [row for row in rows if row["flaw"]]
    assert 0.22 < len(flawed) / len(rows) < 0.38
    assert {row["flaw"] for row in flawed} == {"wrong_result", "refusal", "no_final_answer"}
    for row in flawed:
        final = re.search(r"#### (\d+)", row["answer"])
        if row["flaw"] == "wrong_result":
            assert final is not None
            assert final.group(1) != row["gold_answer"]
        else:
            assert final is None


def test_write_task_keeps_eval_disjoint_and_clean(tmp_path):
    train_path, eval_path = write_task(tmp_path, train_size=40, eval_size=30, seed=5)
    train, held_out = read_jsonl(train_path), read_jsonl(eval_path)
    assert len(train) == 40
    assert len(held_out) == 30
    assert not {r["question"] for r in train} & {r["question"] for r in held_out}
    assert all(row["flaw"] is None for row in held_out)
