"""A run's records archive (run_records): the same records pack to the same bytes, carry no copy of the data,
are restored only into a run of the same config, never over a file the run has, and never with anything but
records in them. The whole round trip (a run gone on in a new directory from its archive, retraining only the
students a later stage needs) is in test_recipe.py."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
from conftest import copy_export

from scotd_harness import run_records
from scotd_harness.errors import ScotdError
from scotd_harness.eval_samples import read_outcomes
from scotd_harness.lm_eval_hook import tasks_dir
from scotd_harness.pipeline import config_differences, load_config

SAMPLE = {"doc_id": 0, "doc": {"task": "csqa", "id": "q-17", "split": "validation", "question": "Where is a cup kept?",
                               "choices": [["a", "kitchen"], ["b", "garage"]], "answer": "a"},
          "target": "a", "arguments": {"gen_args_0": {"arg_0": "Q: Where is a cup kept?\nA:"}},
          "resps": [["A cup is kept in a kitchen. So the answer is: (a)"]], "filtered_resps": ["a"], "filter": "greedy",
          "metrics": ["acc", "invalid_rate"], "doc_hash": "d" * 64, "prompt_hash": "p" * 64, "acc": 1.0,
          "invalid_rate": 0.0}


def _run_dir(root: Path, config: dict) -> Path:
    (root / "eval" / "scotd").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(config))
    (root / "eval" / "scotd" / "results.json").write_text(json.dumps(
        {"results": {"scotd_csqa": {"acc,greedy": 1.0}},
         "config": {"model_args": f"pretrained={root.resolve()}/students/scotd/onnx-fp32"},
         "configs": {"scotd_csqa": {"config_source": f"{tasks_dir()}/csqa/scotd_csqa.yaml",
                                    "filter_list": [{"function": f"<class '{tasks_dir()}/utils.ExtractAnswer'>"}]}}}))
    (root / "eval" / "scotd" / "samples_scotd_csqa.jsonl").write_text(json.dumps(SAMPLE) + "\n")
    (root / "tune").mkdir()
    (root / "tune" / "scores.json").write_text('{"scotd_2k lr0.0001": {"accuracy": 0.4}}')
    (root / "students" / "scotd").mkdir(parents=True)
    (root / "students" / "scotd" / "scotd.json").write_text('{"result": {"eval_losses": [1.0]}}')
    (root / "students" / "scotd" / "model.safetensors").write_bytes(b"weights")
    (root / "corpus.jsonl").write_text("{}\n")
    return root


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_records_hold_the_findings_not_the_weights_nor_the_data(tmp_path):
    run = _run_dir(tmp_path / "run", {**load_config(None).model_dump(), "corpus_source": "distilling-step-by-step"})
    archive = run_records.pack(run)
    assert archive == run / "records.tar.gz"
    members = _members(archive)
    # no weights, and an imported corpus is not a record (the stages rebuild it from the data)
    assert set(members) == {"config.json", "tune/scores.json", "students/scotd/scotd.json",
                            "eval/scotd/results.json", "eval/scotd/samples_scotd_csqa.jsonl"}
    sample = json.loads(members["eval/scotd/samples_scotd_csqa.jsonl"])
    assert "Where is a cup kept" not in json.dumps(sample) and "kitchen" not in json.dumps(sample["doc"])
    assert sample["resps"] == SAMPLE["resps"] and sample["doc"]["id"] == "q-17" and sample["doc"]["answer"] == "a"
    # what the report reads of it is what it read of the original
    restored = tmp_path / "restored"
    restored.mkdir()
    (restored / "samples_scotd_csqa.jsonl").write_bytes(members["eval/scotd/samples_scotd_csqa.jsonl"])
    assert read_outcomes(restored) == read_outcomes(run / "eval" / "scotd")
    # paths into the run are written relative to it (the run's own file is left as it is)
    results = json.loads(members["eval/scotd/results.json"])
    assert results["config"]["model_args"] == "pretrained=./students/scotd/onnx-fp32"
    # and the installed task files' by the package's name for them
    task = results["configs"]["scotd_csqa"]
    assert task["config_source"] == "scotd_harness/tasks/csqa/scotd_csqa.yaml"
    assert task["filter_list"][0]["function"] == "<class 'scotd_harness/tasks/utils.ExtractAnswer'>"
    assert str(run.resolve()) in (run / "eval" / "scotd" / "results.json").read_text()


def test_task_paths_of_another_install_are_not_packed(tmp_path):
    """The evaluation ran from one install (a checkout, a venv) and the records are packed from another: the task
    files' paths of the first are still written by the package's name, so no folder of that machine is packed."""
    run = _run_dir(tmp_path / "run", {**load_config(None).model_dump(), "corpus_source": "distilling-step-by-step"})
    results = run / "eval" / "scotd" / "results.json"
    other = "/home/someone/venv/lib/python3.11/site-packages/scotd_harness/tasks"
    results.write_text(results.read_text().replace(str(tasks_dir()), other))
    packed = json.loads(_members(run_records.pack(run))["eval/scotd/results.json"])
    task = packed["configs"]["scotd_csqa"]
    assert task["config_source"] == "scotd_harness/tasks/csqa/scotd_csqa.yaml"
    assert task["filter_list"][0]["function"] == "<class 'scotd_harness/tasks/utils.ExtractAnswer'>"
    assert "/home/someone" not in json.dumps(packed)


def test_a_sampled_corpus_is_a_record(tmp_path):
    run = _run_dir(tmp_path / "run", load_config(None).model_dump())  # (the demo samples its teacher)
    assert "corpus.jsonl" in _members(run_records.pack(run))


def test_the_same_records_pack_to_the_same_bytes_wherever_and_whenever(tmp_path, monkeypatch):
    config = load_config(None).model_dump()
    first = run_records.pack(_run_dir(tmp_path / "a", config), tmp_path / "a.tar.gz").read_bytes()
    other = _run_dir(tmp_path / "elsewhere" / "b", config)
    for path in other.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    # a run named by a relative --out: its paths are made relative too
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert run_records.pack(Path("b"), tmp_path / "b.tar.gz").read_bytes() == first


def test_restore_puts_what_is_missing_and_keeps_what_the_run_has(tmp_path):
    config = load_config(None).model_dump()
    archive = run_records.pack(_run_dir(tmp_path / "old", config), tmp_path / "records.tar.gz")
    new = tmp_path / "new"
    (new / "eval" / "scotd").mkdir(parents=True)
    (new / "eval" / "scotd" / "results.json").write_text("the run's own")
    put = run_records.put(run_records.read(archive, config, config_differences), new)
    assert "eval/scotd/results.json" not in put and (new / "eval" / "scotd" / "results.json").read_text() == "the run's own"
    assert json.loads((new / "tune" / "scores.json").read_text()) == {"scotd_2k lr0.0001": {"accuracy": 0.4}}
    assert (new / "students" / "scotd" / "scotd.json").is_file()
    assert not list(new.rglob("*.safetensors"))


def test_records_of_another_config_are_refused_naming_the_settings(tmp_path):
    config = load_config(None).model_dump()
    archive = run_records.pack(_run_dir(tmp_path / "old", config), tmp_path / "records.tar.gz")
    other = {**config, "seed": config["seed"] + 1}
    with pytest.raises(ScotdError, match=r"other settings \(seed differ\)"):
        run_records.read(archive, other, config_differences)


@pytest.mark.parametrize("name", ["../outside.json", "/abs/config.json", "students/scotd/model.safetensors",
                                  "eval/scotd/../../escape/results.json"])
def test_an_archive_with_anything_but_records_is_refused(tmp_path, name):
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
        run_records.read(archive, config, config_differences)


def test_a_file_that_is_not_an_archive_is_a_clear_error(tmp_path):
    bad = tmp_path / "records.tar.gz"
    bad.write_text("not a tar")
    with pytest.raises(ScotdError, match="not a readable records archive"):
        run_records.read(bad, load_config(None).model_dump(), config_differences)


def test_a_refused_restore_leaves_the_run_directory_as_it_was(tmp_path):
    """Through the CLI: records of another config, refused before the new run directory is made."""
    from click.testing import CliRunner

    from scotd_harness.commands.pipeline import command

    config = load_config(None).model_dump()
    archive = run_records.pack(_run_dir(tmp_path / "old", {**config, "seed": config["seed"] + 1}),
                               tmp_path / "records.tar.gz")
    result = CliRunner().invoke(command, ["--out", str(tmp_path / "new"), "--restore", str(archive)])
    assert result.exit_code != 0 and "other settings (seed differ)" in str(result.exception or result.output)
    assert not (tmp_path / "new").exists()
    shutil.rmtree(tmp_path / "old")


def _sampled_rows(examples, chains: int = 2):
    from scotd_harness.corpus import CorpusRow

    # (U+2028 in a chain: a line separator to str.splitlines, not to JSON lines)
    return [CorpusRow(task="demo", id=ex.id, sample_index=i, question=ex.question,
                      choices=[list(c) for c in ex.choices], answer=ex.answer, rationale=f"Chain {i}\u2028of {ex.id}.",
                      prediction=ex.answer, correct=True, logprob=-3.5, num_tokens=9, teacher="onnx:teacher",
                      prompt_version="v1", temperature=1.0, raw=f"Chain {i}. So the answer is ({ex.answer}).",
                      extra={"split": "train", "seed": 0, "token_logprobs": [-0.5, -3.0]})
            for ex in examples for i in range(chains)]


def test_a_sampled_corpus_is_restored_byte_for_byte_from_records_without_its_questions(tmp_path):
    """A sampled chain's question text and choices are data: the records leave them out, and a restore joins them
    back from the run's train split by id, giving the corpus the sampler wrote. A line the sampler is still
    writing is left out; a chain of a question the data lacks, or data whose questions differ from those the
    chains were sampled on, is refused."""
    from dataclasses import replace

    from scotd_harness.datasets import load_examples

    config = load_config(None)  # the demo run samples its teacher on the built-in demo questions
    examples = load_examples("demo", config.train_split)[:3]
    rows = _sampled_rows(examples)
    run = _run_dir(tmp_path / "run", config.model_dump())
    corpus = "".join(r.to_json() + "\n" for r in rows)
    (run / "corpus.jsonl").write_text(corpus + rows[0].to_json()[:40])  # a line still being written
    members = _members(run_records.pack(run))
    packed = members["corpus.jsonl"].decode()
    assert len(packed.split("\n")) == len(rows) + 1
    for ex in examples:
        assert ex.question not in packed and not any(f'"{text}"' in packed for _, text in ex.choices)
    restored = run_records.with_questions(members, load_examples("demo", config.train_split), "records.tar.gz")
    assert restored["corpus.jsonl"].decode() == corpus

    unknown = packed.replace(examples[1].id, "not-a-demo-id")
    with pytest.raises(ScotdError, match="records.tar.gz: corpus.jsonl line 3: question id 'not-a-demo-id'"):
        run_records.with_questions({**members, "corpus.jsonl": unknown.encode()}, examples, "records.tar.gz")
    edited = [replace(examples[0], question=examples[0].question + " (edited)"), *examples[1:]]
    with pytest.raises(ScotdError, match="the data differs from the copy they were sampled on"):
        run_records.with_questions(members, edited, "records.tar.gz")


def test_a_run_killed_while_sampling_goes_on_from_its_kept_records(tmp_path, monkeypatch, onnx_student_dir):
    """The sample stage packs the records while it samples (here after every teacher call, one question each)
    and copies them to `keep_records`; killed after its first call, the run goes on in a new folder from that
    copy, samples only the chains it lacks, and ends with the corpus of an uninterrupted run."""
    from scotd_harness import pipeline
    from scotd_harness.pipeline import PipelineConfig, Run, run_pipeline
    from scotd_harness.teacher.onnx_backend import OnnxTeacher

    cfg = PipelineConfig.from_dict({"task": "demo", "teacher": f"onnx:{onnx_student_dir}", "n": 2, "train_limit": 2,
                                    "max_new_tokens": 8, "filters": ["all"]}, source="test")
    monkeypatch.setattr(OnnxTeacher, "questions_per_call", lambda self, n: 1)
    whole = run_pipeline(cfg, tmp_path / "whole", until="sample", say=lambda msg: None).corpus.read_bytes()
    assert len(whole.splitlines()) == 4

    kept = tmp_path / "kept" / "records.tar.gz"
    monkeypatch.setattr(pipeline, "RECORDS_WHILE_SAMPLING_S", 0)
    pack_records = Run.pack_records

    def killed_after_packing(run):
        pack_records(run)
        raise KeyboardInterrupt

    monkeypatch.setattr(Run, "pack_records", killed_after_packing)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, tmp_path / "killed", until="sample", keep_records=kept, say=lambda msg: None)
    monkeypatch.setattr(Run, "pack_records", pack_records)
    assert "sample" not in Run(tmp_path / "killed", cfg).state()
    assert kept.read_bytes() == (tmp_path / "killed" / "records.tar.gz").read_bytes()
    assert (tmp_path / "killed" / "corpus.jsonl").read_bytes() == b"".join(whole.splitlines(keepends=True)[:2])

    said = []
    run = run_pipeline(cfg, tmp_path / "new", until="sample", restore=kept, keep_records=kept, say=said.append)
    assert (run.root / "corpus.jsonl").read_bytes() == whole
    assert any("2 chains written for 1 questions (2 already in the corpus)" in line for line in said), said
    assert run.state()["sample"]["chains"] == 4 and any("restored" in line for line in said)
    assert kept.read_bytes() == (run.root / "records.tar.gz").read_bytes()

    # the killed run's folder is behind those records now: going on from it would pack its 2 chains over their 4
    before = kept.read_bytes()
    with pytest.raises(ScotdError, match="killed is behind the records of .*corpus.jsonl holds 2 chains, the records 4"):
        run_pipeline(cfg, tmp_path / "killed", until="sample", restore=kept, keep_records=kept, say=lambda msg: None)
    assert kept.read_bytes() == before


def test_a_run_goes_on_from_its_records_where_its_teacher_is_not(tmp_path, onnx_student_dir):
    """Records travel to a machine without the teacher (its export stayed behind): `scotd pipeline --restore` goes
    on when every chain is sampled, without loading the teacher; with chains left to sample it says which teacher it
    lacks, and a new run still refuses a teacher that is not there before it makes its folder."""
    from click.testing import CliRunner

    from scotd_harness.cli import cli

    teacher = tmp_path / "teacher"  # (a copy: it is lost below)
    copy_export(onnx_student_dir, teacher)
    config = tmp_path / "run.yaml"
    config.write_text(f"task: demo\nteacher: onnx:{teacher}\nn: 2\ntrain_limit: 2\nmax_new_tokens: 8\n"
                      "filters: [all]\n")
    args = ["pipeline", "--config", str(config), "--until", "filter", "--no-report"]
    sampled = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "there")])
    assert sampled.exit_code == 0, sampled.output
    corpus = (tmp_path / "there" / "corpus.jsonl").read_bytes()
    assert len(corpus.splitlines()) == 4
    shutil.rmtree(teacher)

    restored = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "here"),
                                        "--restore", str(tmp_path / "there" / "records.tar.gz")])
    assert restored.exit_code == 0, restored.output
    assert "the teacher is not loaded" in restored.output
    assert (tmp_path / "here" / "corpus.jsonl").read_bytes() == corpus
    assert (tmp_path / "here" / "corpus.filtered.jsonl").is_file()

    # one question's chains lost: the teacher is needed, and the error names it
    partial = tmp_path / "partial"
    shutil.copytree(tmp_path / "here", partial)
    (partial / "stages.json").unlink()
    (partial / "corpus.jsonl").write_bytes(b"".join(corpus.splitlines(keepends=True)[:2]))
    lacking = CliRunner().invoke(cli, [*args, "--out", str(partial)])
    assert lacking.exit_code == 1 and f"directory {teacher} not found" in lacking.output
    fresh = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "fresh")])
    assert fresh.exit_code == 1 and "key 'teacher'" in fresh.output and not (tmp_path / "fresh").exists()
