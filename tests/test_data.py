import json
import logging

import pytest

from dnpo.configbase import ConfigError
from dnpo.data import (
    DATA_FLAGS,
    DataConfig,
    empty_local_file,
    gsm8k_gold_answer,
    load_sft_examples,
    prompt_hash,
)
from dnpo.errors import DataError


def write_jsonl(path, rows):
    path.write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8"
    )
    return path


def load(path, **kwargs):
    return load_sft_examples(DataConfig(path=str(path), **kwargs))


def test_messages_rows_multi_turn_and_null_system(tmp_path):
    rows = [
        {
            "prompt_id": "p1",
            "messages": [
                {"role": "system", "content": None},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Tell me a joke"},
                {"role": "assistant", "content": "Why did the chicken…"},
            ],
        },
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
    ]
    examples, skipped = load(write_jsonl(tmp_path / "chat.jsonl", rows))
    assert skipped == {}
    first = examples[0]
    assert first["id"] == "p1"
    assert first["prompt"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell me a joke"},
    ]
    assert first["reference"] == "Why did the chicken…"
    assert first["gold_answer"] is None
    assert first["metadata"]["format"] == "messages"
    assert examples[1]["id"] == prompt_hash([{"role": "user", "content": "Q"}])


def test_row_level_system_prompt_is_prepended(tmp_path):
    rows = [{"system": "Be brief.", "prompt": "Q?", "response": "A."}]
    examples, _ = load(write_jsonl(tmp_path / "rows.jsonl", rows))
    assert examples[0]["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q?"},
    ]


def test_bad_rows_skipped_by_reason(tmp_path, caplog):
    rows = [
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "  "}]},
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "A"}]},
        {"messages": "not a list"},
        {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "A"}]},
        {"messages": [{"role": "assistant", "content": "A"}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "again"}]},
        {
            "messages": [
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A"},
                {"role": "assistant", "content": "B"},
            ]
        },
    ]
    with caplog.at_level(logging.WARNING, logger="dnpo.data"):
        examples, skipped = load(write_jsonl(tmp_path / "bad.jsonl", rows))
    assert len(examples) == 1
    assert skipped == {
        "duplicate_id": 1,
        "empty_prompt": 1,
        "empty_reference": 1,
        "ends_with_user_turn": 1,
        "invalid_prompt": 1,
        "invalid_type": 2,
        "missing_prompt": 1,
    }
    assert "Skipped 8 rows" in caplog.text


def test_one_skipped_row_singular_message(tmp_path, caplog):
    rows = [{"prompt": "Q?", "response": "A."}, {"prompt": "", "response": "A."}]
    with caplog.at_level(logging.INFO, logger="dnpo.data"):
        examples, skipped = load(write_jsonl(tmp_path / "rows.jsonl", rows))
    assert skipped == {"empty_prompt": 1}
    assert "Skipped 1 row of " in caplog.text
    assert "Loaded 1 example (" in caplog.text


def test_prompt_response_missing_fields(tmp_path):
    rows = [
        {"prompt": "Q1", "response": "A1"},
        {"prompt": "Q2"},
        {"prompt": None, "response": "A"},
        {"prompt": "Q3", "response": 42},
        {
            "prompt": [{"role": "user", "content": "Q4"}],
            "response": {"role": "assistant", "content": "A4"},
        },
    ]
    examples, skipped = load(write_jsonl(tmp_path / "pr.jsonl", rows))
    assert [e["reference"] for e in examples] == ["A1", "A4"]
    assert skipped == {"invalid_type": 1, "missing_prompt": 1, "missing_reference": 1}


def test_invalid_json_and_utf8_lines_counted(tmp_path, caplog):
    path = tmp_path / "mixed.jsonl"
    good = json.dumps({"prompt": "Q", "response": "A"}).encode()
    path.write_bytes(
        good + b"\n{not json\n" + b'{"prompt": "\xff\xfe", "response": "A"}\n' + b"\n[1, 2]\n"
    )
    with caplog.at_level(logging.WARNING, logger="dnpo.data"):
        examples, skipped = load(path)
    assert len(examples) == 1
    assert skipped == {"invalid_json": 1, "invalid_utf8": 1, "not_an_object": 1}
    assert "mixed.jsonl:2" in caplog.text
    assert "mixed.jsonl:3" in caplog.text


def test_every_row_skipped_raises_with_counts(tmp_path):
    path = write_jsonl(tmp_path / "empty_refs.jsonl", [{"prompt": "Q", "response": ""}] * 3)
    with pytest.raises(DataError, match="empty_refs.jsonl.*'empty_reference': 3"):
        load(path)


def test_unknown_layout_names_keys(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"text": "hello"}])
    with pytest.raises(DataError, match=r"keys \['text'\].*data.format"):
        load(path)


def test_no_usable_rows_hint_names_config_fields(tmp_path):
    path = write_jsonl(tmp_path / "empty_refs.jsonl", [{"prompt": "Q", "response": ""}])
    with pytest.raises(DataError, match=r"Check data\.format and data\.fields\.$"):
        load(path)


def test_no_usable_rows_hint_names_eval_data_fields(tmp_path):
    path = write_jsonl(tmp_path / "empty_refs.jsonl", [{"prompt": "Q", "response": ""}])
    config = DataConfig.from_dict({"path": str(path)}, prefix="eval_data.")
    with pytest.raises(DataError, match=r"Check eval_data\.format and eval_data\.fields\.$"):
        load_sft_examples(config)


def test_no_usable_rows_hint_names_flags(tmp_path):
    path = write_jsonl(tmp_path / "empty_refs.jsonl", [{"prompt": "Q", "response": ""}])
    with pytest.raises(DataError, match=r"Check --data-format and --data-field\.$"):
        load_sft_examples(DataConfig(path=str(path)), DATA_FLAGS)


def test_unknown_layout_hint_names_flags(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"text": "hello"}])
    with pytest.raises(DataError) as error:
        load_sft_examples(DataConfig(path=str(path)), DATA_FLAGS)
    assert "set --data-format to one of" in str(error.value)
    assert "map field names with --data-field" in str(error.value)
    assert "data.format" not in str(error.value)


def test_unknown_first_row_skipped(tmp_path, caplog):
    rows = [{"text": "hello"}, {"prompt": "Q1", "response": "A1"}, {"prompt": "Q2", "response": "A2"}]
    with caplog.at_level(logging.WARNING, logger="dnpo.data"):
        examples, skipped = load(write_jsonl(tmp_path / "odd_first.jsonl", rows))
    assert [e["reference"] for e in examples] == ["A1", "A2"]
    assert skipped == {"unknown_format": 1}
    assert "'unknown_format': 1" in caplog.text


def test_home_relative_path_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_jsonl(tmp_path / "home.jsonl", [{"prompt": "Q", "response": "A"}])
    (tmp_path / "folder").mkdir()
    write_jsonl(tmp_path / "folder" / "train.jsonl", [{"prompt": "Q2", "response": "A2"}])
    file_examples, _ = load_sft_examples(DataConfig(path="~/home.jsonl"))
    folder_examples, _ = load_sft_examples(DataConfig(path="~/folder"))
    assert [e["reference"] for e in file_examples] == ["A"]
    assert [e["reference"] for e in folder_examples] == ["A2"]


def test_field_overrides(tmp_path):
    path = write_jsonl(tmp_path / "custom.jsonl", [{"uid": 7, "q": "Q?", "a": "A!"}])
    examples, _ = load(
        path, format="prompt_response", fields={"prompt": "q", "response": "a", "id": "uid"}
    )
    assert examples[0]["id"] == "7"
    assert examples[0]["prompt"] == [{"role": "user", "content": "Q?"}]


def test_unknown_field_key_rejected():
    with pytest.raises(ConfigError, match="unknown field keys"):
        DataConfig(path="x.jsonl", fields={"promt": "q"})


def test_gsm8k_rows(shared_dir):
    examples, skipped = load(shared_dir / "data/gsm8k/test.jsonl", max_examples=20, seed=3)
    assert skipped == {}
    assert len(examples) == 20
    for example in examples:
        assert example["gold_answer"] == gsm8k_gold_answer(example["reference"])
        assert "<<" not in example["reference"]
        assert example["reference"].rstrip().endswith(f"#### {example['gold_answer']}")
    first = load(shared_dir / "data/gsm8k/test.jsonl")[0][0]
    assert first["gold_answer"] == "18"


def test_subsample_is_seeded_and_ordered(shared_dir):
    path = shared_dir / "data/gsm8k/test.jsonl"
    a, _ = load(path, max_examples=10, seed=1)
    b, _ = load(path, max_examples=10, seed=1)
    c, _ = load(path, max_examples=10, seed=2)
    assert [e["id"] for e in a] == [e["id"] for e in b]
    assert [e["id"] for e in a] != [e["id"] for e in c]
    lines = [e["metadata"]["line"] for e in a]
    assert lines == sorted(lines)


def test_seed_tasks_rows(shared_dir):
    examples, skipped = load(shared_dir / "data/seed_tasks/seed_tasks.jsonl")
    assert skipped == {}
    by_id = {e["id"]: e for e in examples}
    antonym = by_id["seed_task_1"]
    assert antonym["prompt"][0]["content"] == (
        "What is the relation between the given pairs?\n\nNight : Day :: Right : Left"
    )
    assert antonym["reference"].startswith("The relation between the given pairs")
    assert antonym["metadata"]["name"] == "antonym_relation"
    assert "id" not in antonym["metadata"]


def test_seed_task_with_top_level_output(tmp_path):
    path = write_jsonl(tmp_path / "tasks.jsonl", [{"instruction": "Say hi", "output": "hi"}])
    examples, _ = load(path)
    assert examples[0]["reference"] == "hi"


def test_json_and_parquet_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question": "1+1?", "answer": "2\n#### 2"}, {"question": "2+2?", "answer": "#### 4"}]
    (tmp_path / "rows.json").write_text(json.dumps(rows), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    from_json, _ = load(tmp_path / "rows.json")
    from_parquet, _ = load(tmp_path / "rows.parquet")
    assert [e["gold_answer"] for e in from_json] == ["2", "4"]
    assert [e["id"] for e in from_json] == [e["id"] for e in from_parquet]


def test_missing_path_is_not_a_crash(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load(tmp_path / "nope")


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json"])
def test_empty_file_error_names_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(DataError) as error:
        load(path)
    assert str(error.value).startswith(f"{path}: no usable rows")
    assert "the source is empty" in str(error.value)


def test_empty_parquet_file_is_data_error(tmp_path):
    path = tmp_path / "empty.parquet"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=f"{path}: not a readable Parquet file"):
        load(path)


def test_empty_dataset_folder_named(tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    with pytest.raises(DataError, match=f"dataset folder {folder} contains no data files"):
        load(folder)


def test_empty_local_file_detection(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "blank.jsonl").write_bytes(b"\n  \n")
    (tmp_path / "rows.jsonl").write_bytes(b'{"prompt": "x", "response": "y"}\n')
    assert empty_local_file(str(tmp_path / "empty.jsonl"))
    assert empty_local_file(str(tmp_path / "blank.jsonl"))
    assert not empty_local_file(str(tmp_path / "rows.jsonl"))
    assert not empty_local_file(str(tmp_path / "missing.jsonl"))
    assert not empty_local_file("someorg/some-dataset")


def data_args(**changes):
    from argparse import Namespace

    values = dict(
        data="data.jsonl",
        data_subset="",
        data_split="train",
        data_format="auto",
        data_field=[],
        max_examples=0,
        data_seed=0,
    )
    values.update(changes)
    return Namespace(**values)


def test_data_args_unknown_field_names_flag():
    from dnpo.data import data_config_from_args

    with pytest.raises(ConfigError, match=r"--data-field: unknown field names \['text'\]"):
        data_config_from_args(data_args(data_field=["text=body"]))


def test_data_args_repeated_field_rejected():
    from dnpo.data import data_config_from_args

    with pytest.raises(ConfigError, match="--data-field question is given twice"):
        data_config_from_args(data_args(data_field=["question=q", "question=a"]))


def test_data_args_repeated_same_field_accepted():
    from dnpo.data import data_config_from_args

    config = data_config_from_args(data_args(data_field=["question=q", "question=q"]))
    assert config.fields == {"question": "q"}


def test_data_args_negative_max_examples_names_flag():
    from dnpo.data import data_config_from_args

    with pytest.raises(ConfigError, match="--max-examples must be >= 0, got -1"):
        data_config_from_args(data_args(max_examples=-1))
