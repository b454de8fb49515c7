"""A run's records archive (run_records): packed the same way twice, restored only into a run of the same
config, never over a file the run has, and never with anything but records in it. The whole round trip (a run
gone on in a new directory from its archive, retraining only the exported student) is in test_recipe.py."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from scotd_harness import run_records
from scotd_harness.errors import ScotdError
from scotd_harness.pipeline import config_differences, load_config


def _run_dir(root: Path, config: dict) -> Path:
    (root / "eval" / "scotd").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(config))
    (root / "eval" / "scotd" / "results.json").write_text('{"results": {"scotd_csqa": {"acc,strict-match": 0.5}}}')
    (root / "eval" / "scotd" / "samples_scotd_csqa.jsonl").write_text('{"doc_id": 0, "acc": 1.0}\n')
    (root / "tune").mkdir()
    (root / "tune" / "scores.json").write_text('{"scotd_2k lr0.0001": {"accuracy": 0.4}}')
    (root / "students" / "scotd").mkdir(parents=True)
    (root / "students" / "scotd" / "scotd.json").write_text('{"result": {"eval_losses": [1.0]}}')
    (root / "students" / "scotd" / "model.safetensors").write_bytes(b"weights")
    (root / "corpus.jsonl").write_text("{}\n")
    return root


def _names(archive: Path) -> set[str]:
    with tarfile.open(archive) as tar:
        return set(tar.getnames())


def test_records_hold_the_findings_not_the_weights_and_pack_the_same_twice(tmp_path):
    config = load_config(None).model_dump()
    run = _run_dir(tmp_path / "run", config)
    archive = run_records.pack(run)
    assert archive == run / "records.tar.gz"
    assert _names(archive) == {"config.json", "tune/scores.json", "students/scotd/scotd.json",
                               "eval/scotd/results.json", "eval/scotd/samples_scotd_csqa.jsonl"}
    first = archive.read_bytes()
    assert run_records.pack(run).read_bytes() == first


def test_restore_puts_what_is_missing_and_keeps_what_the_run_has(tmp_path):
    config = load_config(None).model_dump()
    archive = run_records.pack(_run_dir(tmp_path / "old", config), tmp_path / "records.tar.gz")
    new = tmp_path / "new"
    (new / "eval" / "scotd").mkdir(parents=True)
    (new / "eval" / "scotd" / "results.json").write_text("the run's own")
    put = run_records.restore(archive, new, config, config_differences)
    assert "eval/scotd/results.json" not in put and (new / "eval" / "scotd" / "results.json").read_text() == "the run's own"
    assert json.loads((new / "tune" / "scores.json").read_text()) == {"scotd_2k lr0.0001": {"accuracy": 0.4}}
    assert (new / "students" / "scotd" / "scotd.json").is_file()
    assert not list(new.rglob("*.safetensors"))


def test_records_of_another_config_are_refused_naming_the_settings(tmp_path):
    config = load_config(None).model_dump()
    archive = run_records.pack(_run_dir(tmp_path / "old", config), tmp_path / "records.tar.gz")
    other = {**config, "seed": config["seed"] + 1}
    with pytest.raises(ScotdError, match=r"other settings \(seed differ\)"):
        run_records.restore(archive, tmp_path / "new", other, config_differences)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("name", ["../outside.json", "/abs/config.json", "students/scotd/model.safetensors",
                                  "eval/scotd/../../escape/results.json"])
def test_an_archive_with_anything_but_records_is_refused_before_a_file_is_written(tmp_path, name):
    config = load_config(None).model_dump()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member, data in (("config.json", json.dumps(config).encode()), (name, b"x")):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(buffer.getvalue())
    with pytest.raises(ScotdError, match="is not a run record"):
        run_records.restore(archive, tmp_path / "new", config, config_differences)
    assert not (tmp_path / "new").exists() and not (tmp_path / "outside.json").exists()


def test_a_file_that_is_not_an_archive_is_a_clear_error(tmp_path):
    bad = tmp_path / "records.tar.gz"
    bad.write_text("not a tar")
    with pytest.raises(ScotdError, match="not a readable records archive"):
        run_records.restore(bad, tmp_path / "new", load_config(None).model_dump(), config_differences)


def test_paths_inside_the_run_are_packed_relative_to_it(tmp_path):
    run = _run_dir(tmp_path / "run", load_config(None).model_dump())
    (run / "eval" / "scotd" / "results.json").write_text(json.dumps(
        {"config": {"model_args": f"pretrained={run.resolve()}/students/scotd/onnx-fp32"}, "results": {}}))
    archive = run_records.pack(run)
    with tarfile.open(archive) as tar:
        results = json.load(tar.extractfile("eval/scotd/results.json"))
    assert results["config"]["model_args"] == "pretrained=./students/scotd/onnx-fp32"
    assert f"{run.resolve()}/students" in (run / "eval" / "scotd" / "results.json").read_text()
