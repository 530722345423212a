import json

from dnpo.cli import main
from dnpo.io import read_json, read_jsonl
from dnpo.testing import save_tiny_model


def test_generate_judge_label_commands(tmp_path, shared_dir, capsys):
    model = save_tiny_model(tmp_path / "model")
    generations = tmp_path / "generations.jsonl"
    judgments = tmp_path / "judgments.jsonl"
    data = str(shared_dir / "data/gsm8k/test.jsonl")

    code = main(
        [
            "generate",
            "--data",
            data,
            "--max-examples",
            "6",
            "--model",
            str(model),
            "--output",
            str(generations),
            "--max-new-tokens",
            "12",
            "--batch-size",
            "4",
            "--temperature",
            "0.8",
        ]
    )
    assert code == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["generated"] == 6
    records = read_jsonl(generations)
    assert len(records) == 6
    assert all(r["gold_answer"] is not None for r in records)

    code = main(
        [
            "generate",
            "--data",
            data,
            "--max-examples",
            "6",
            "--model",
            str(model),
            "--output",
            str(generations),
            "--max-new-tokens",
            "12",
            "--temperature",
            "0.8",
        ]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out)["already_done"] == 6

    code = main(
        [
            "judge",
            "--generations",
            str(generations),
            "--output",
            str(judgments),
            "--type",
            "verifier",
        ]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out)["failed_items"] == 0
    assert all(r["reference"]["score"] == 100 for r in read_jsonl(judgments))

    code = main(
        [
            "label",
            "--generations",
            str(generations),
            "--judgments",
            str(judgments),
            "--iteration",
            "1",
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    capsys.readouterr()
    labels = read_json(tmp_path / "labels.json")
    assert labels["generations"] == 6
    assert labels["judged"] == 6
    assert len(read_jsonl(tmp_path / "pairs.jsonl")) == labels["pairs"]


def test_generate_reports_bad_data_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "", "response": "x"}\n', encoding="utf-8")
    code = main(
        [
            "generate",
            "--data",
            str(bad),
            "--model",
            str(tmp_path / "none"),
            "--output",
            str(tmp_path / "out.jsonl"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "no usable rows" in err
    assert "empty_prompt" in err
    assert "Check --data-format and --data-field." in err
    assert "data.format" not in err
