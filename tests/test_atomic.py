import json
import stat

import pytest

from scotd_harness import atomic


def test_rewrite_replaces_the_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "results.json"
    atomic.write_json(target, {"a": 1})
    atomic.write_text(target, '{"a": 2}')
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_an_error_mid_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "corpus.jsonl"
    target.write_text("old line\n")
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(target) as f:
            f.write("half a new fi")
            raise RuntimeError("killed")
    assert target.read_text() == "old line\n"
    assert [p.name for p in tmp_path.iterdir()] == ["corpus.jsonl"]


def test_parent_folders_are_created(tmp_path):
    target = tmp_path / "a" / "b" / "state.json"
    atomic.write_json(target, {"when": object()}, default=str)
    assert "object" in json.loads(target.read_text())["when"]
