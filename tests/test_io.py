import json

import pytest

from dnpo.io import JsonlWriter, atomic_write_json, read_json, read_jsonl, repair_jsonl


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "sub" / "data.json"
    atomic_write_json(path, {"a": "é😀"})
    assert read_json(path) == {"a": "é😀"}
    assert [p.name for p in path.parent.iterdir()] == ["data.json"]


def test_writer_skips_ids_already_written(tmp_path):
    path = tmp_path / "records.jsonl"
    with JsonlWriter(path) as writer:
        assert writer.write({"id": "a", "v": 1})
        assert not writer.write({"id": "a", "v": 2})
    with JsonlWriter(path) as writer:
        assert writer.done == {"a"}
        assert writer.write({"id": "b", "v": 3})
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b"]


def test_torn_last_line_is_removed_on_reopen(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps({"id": "a"}) + "\n" + '{"id": "b", "v"')
    assert read_jsonl(path) == [{"id": "a"}]
    with JsonlWriter(path) as writer:
        assert writer.done == {"a"}
        writer.write({"id": "b"})
    assert read_jsonl(path) == [{"id": "a"}, {"id": "b"}]


def test_unparsable_terminated_last_line_is_removed(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"id": "a"}\n{"id": \n')
    assert repair_jsonl(path) == len('{"id": \n')
    assert path.read_text() == '{"id": "a"}\n'


def test_corrupt_middle_line_raises_with_line_number(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"id": "a"}\nnot json\n{"id": "c"}\n')
    with pytest.raises(ValueError, match="records.jsonl:2: invalid JSON line"):
        read_jsonl(path)
