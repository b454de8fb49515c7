"""bench/chains_curve.py keeps each stage's records beside the repository and goes on from them where its run
folder is gone: the sampled chains come back as they were, without sampling again, and the archives name no folder
of the machine that made them."""

from __future__ import annotations

import importlib.util
import json
import shutil
import tarfile
import time
from pathlib import Path

import pytest
from conftest import copy_export

from scotd_harness.errors import ScotdError

BENCH = Path(__file__).parents[1] / "bench" / "chains_curve.py"


def _chains_curve():
    spec = importlib.util.spec_from_file_location("chains_curve", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_lost_run_folder_goes_on_from_the_kept_records(tmp_path, monkeypatch, caplog, data_dir, onnx_student_dir):
    caplog.set_level("INFO", logger="chains_curve")
    monkeypatch.chdir(tmp_path)  # (the script moves into its run folder; pytest's tmp_path is its parent)
    exclude = tmp_path / "seen.jsonl"
    exclude.write_text("")
    export = tmp_path / "teacher"  # (a copy: it is lost with the run folder below)
    copy_export(onnx_student_dir, export)
    args = ["--teacher", str(export), "--exclude", str(exclude), "--run-dir", "curve",
            "--records", "kept", "--questions", "2", "--n", "2", "--max-new-tokens", "8", "--arms", "none",
            "--eval-limit", "2", "--results", "results"]
    _chains_curve().main(args)
    monkeypatch.chdir(tmp_path)
    corpus = (tmp_path / "curve" / "sample" / "corpus.jsonl").read_bytes()
    assert len(corpus.splitlines()) == 4
    archive = tmp_path / "kept" / "sample.tar.gz"
    with tarfile.open(archive) as tar:
        packed = b"".join(tar.extractfile(m).read() for m in tar.getmembers())
    # the teacher (an export outside the run folder, here) named relative to it, as every path of the configs
    assert str(tmp_path).encode() not in packed and b'"onnx:/' not in packed and b'"teacher": "onnx:../' in packed

    # the teacher scored on dev as it was asked to sample (its few-shot prompt), its records kept beside the sample's
    scored = json.loads((tmp_path / "curve" / "teacher-eval" / "eval" / "teacher" / "results.json").read_text())
    assert scored["scotd"]["tasks"] == ["scotd_csqa_fewshot"] and scored["scotd"]["limit"] == 2
    with tarfile.open(tmp_path / "kept" / "teacher-eval.tar.gz") as tar:
        packed = b"".join(tar.extractfile(m).read() for m in tar.getmembers())
    assert str(tmp_path).encode() not in packed and b'": "/' not in packed and b"=/" not in packed  # (no absolute path)
    # the results page opens with the teacher's accuracy, before any arm is scored
    page = (tmp_path / "results" / "chains_curve.md").read_text()
    assert page.startswith("# Teacher") and "No arm has been scored yet" in page
    teacher = json.loads((tmp_path / "results" / "chains_curve.json").read_text())["teacher"]
    assert teacher["dev_greedy_fewshot"] == scored["results"]["scotd_csqa_fewshot"]["acc,greedy"]
    assert teacher["sampled_questions"] == 2 and 0 <= teacher["per_chain"] <= 1
    assert f"| {100 * teacher['dev_greedy_fewshot']:.1f}% |" in page

    first_sitting = json.loads((tmp_path / "kept" / "wall_time.json").read_text())
    assert set(first_sitting) == {"teacher", "sample", "teacher-eval"} and first_sitting["teacher-eval"] > 0
    wall = json.loads((tmp_path / "results" / "chains_curve.json").read_text())["wall_time_s"]
    assert wall == {**first_sitting, "total": round(sum(first_sitting.values()), 1)}

    # a lost scratch disk, the teacher's export with it: the teacher's stages are recorded, and the arms need only
    # the chains, so the study goes on without it (nothing sampled or scored again)
    shutil.rmtree(tmp_path / "curve")
    shutil.rmtree(export)
    page = (tmp_path / "results" / "chains_curve.md").read_bytes()
    # nothing restored yet: the page is not rewritten without the recorded stages' figures
    with pytest.raises(SystemExit, match="sample, teacher-eval: recorded in .* but not in"):
        _chains_curve().main([*args, "--report-only"])
    monkeypatch.chdir(tmp_path)
    assert (tmp_path / "results" / "chains_curve.md").read_bytes() == page
    caplog.clear()
    _chains_curve().main(args)
    assert (tmp_path / "curve" / "sample" / "corpus.jsonl").read_bytes() == corpus
    assert "0 chains written for 0 questions (4 already in the corpus)" in caplog.text
    assert "the teacher is not loaded" in caplog.text
    # the teacher's own scores come back from their records too, not from scoring it again
    assert "teacher-eval: evaluated already" in caplog.text
    assert "teacher-eval: done" not in caplog.text
    restored = tmp_path / "curve" / "teacher-eval" / "eval" / "teacher" / "results.json"
    assert json.loads(restored.read_text())["results"] == scored["results"]

    # --report-only rewrites the result files from what is finished, runs nothing and adds no wall time
    page, kept_time = (tmp_path / "results" / "chains_curve.md").read_text(), (tmp_path / "kept" / "wall_time.json")
    counted, stages = kept_time.read_bytes(), (tmp_path / "curve" / "sample" / "stages.json").read_bytes()
    shutil.rmtree(tmp_path / "results")
    caplog.clear()
    _chains_curve().main([*args, "--report-only"])
    assert (tmp_path / "results" / "chains_curve.md").read_text() == page
    assert kept_time.read_bytes() == counted and (tmp_path / "curve" / "sample" / "stages.json").read_bytes() == stages
    assert "sample:" not in caplog.text and "teacher-eval:" not in caplog.text


def test_a_scored_teacher_is_not_trained_again_where_its_export_is_lost(tmp_path, monkeypatch, caplog, data_dir,
                                                                         onnx_student_dir):
    """With --teacher-run the teacher is exported into the run folder; lost with it, and the teacher run restored
    from its records (its students' training records and corpora, no weights), the study goes on from its own
    records: the teacher is not trained and exported again (another teacher), nor sampled or scored again."""
    caplog.set_level("INFO", logger="chains_curve")
    monkeypatch.chdir(tmp_path)
    student = tmp_path / "palm" / "students" / "s"  # the teacher run as `scotd pipeline --restore` leaves it
    student.mkdir(parents=True)
    (student / "scotd.json").write_text(json.dumps({"training": {"corpus": "./corpora/seen.jsonl"}}))
    (tmp_path / "palm" / "corpora").mkdir()
    (tmp_path / "palm" / "corpora" / "seen.jsonl").write_text("")
    copy_export(onnx_student_dir, tmp_path / "curve" / "teacher")  # (as exported)
    args = ["--teacher-run", "palm", "--teacher-student", "s", "--run-dir", "curve", "--records", "kept",
            "--questions", "1", "--n", "2", "--max-new-tokens", "8", "--arms", "none", "--eval-limit", "1",
            "--results", "results"]
    _chains_curve().main(args)
    monkeypatch.chdir(tmp_path)
    corpus = (tmp_path / "curve" / "sample" / "corpus.jsonl").read_bytes()
    page = (tmp_path / "results" / "chains_curve.md").read_text()
    shutil.rmtree(tmp_path / "curve")
    caplog.clear()
    _chains_curve().main(args)
    assert "going on without its export" in caplog.text and "the teacher is not loaded" in caplog.text
    assert "teacher-eval: evaluated already" in caplog.text
    assert (tmp_path / "curve" / "sample" / "corpus.jsonl").read_bytes() == corpus
    assert not (tmp_path / "curve" / "teacher").exists()
    assert (tmp_path / "results" / "chains_curve.md").read_text().split("Wall time")[0] == page.split("Wall time")[0]


def test_the_wall_clock_sums_sittings_and_counts_while_a_stage_runs(tmp_path):
    """The study states its wall time over several sittings: the count is on disk while a stage runs (what a
    sitting killed there leaves behind), and the next sitting adds to it."""
    clock_file = tmp_path / "wall_time.json"
    clock = _chains_curve().WallClock(clock_file, every=0.05)
    with clock.stage("sample"):
        time.sleep(0.5)
        # written while the stage runs: what a sitting killed here would leave behind
        assert json.loads(clock_file.read_text())["sample"] >= 0.1
    first = json.loads(clock_file.read_text())["sample"]
    assert first >= 0.5
    again = _chains_curve().WallClock(clock_file, every=0.05)  # the next sitting
    with again.stage("sample"):
        time.sleep(0.2)
    with again.stage("n1-correct"):
        pass
    counted = json.loads(clock_file.read_text())
    assert counted["sample"] >= first + 0.2 and set(counted) == {"sample", "n1-correct"}


def test_the_wall_time_is_called_the_total_once_every_arm_is_scored():
    seconds = {"sample": 3600.0, "n1-correct": 90.0, "total": 3690.0}
    module = _chains_curve()
    assert module.wall_time_line(seconds).startswith("Wall time so far, summed over sittings (h:mm): 1:01 (")
    assert module.wall_time_line(seconds, finished=True).startswith("Wall time of the whole study, summed over")
    assert "sample 1:00, n1-correct 0:01" in module.wall_time_line(seconds, finished=True)


def test_teacher_scores_of_other_settings_are_refused(tmp_path, monkeypatch, data_dir, onnx_student_dir):
    """Scores of the teacher on 2 questions are not shown as its scores on 3: the run folder's and the kept
    archive's are refused, and left as they were."""
    monkeypatch.chdir(tmp_path)
    exclude = tmp_path / "seen.jsonl"
    exclude.write_text("")
    args = ["--teacher", str(onnx_student_dir), "--exclude", str(exclude), "--run-dir", "curve", "--records", "kept",
            "--questions", "1", "--n", "1", "--max-new-tokens", "8", "--arms", "none", "--results", "results"]
    _chains_curve().main([*args, "--eval-limit", "2"])
    monkeypatch.chdir(tmp_path)
    scored = tmp_path / "curve" / "teacher-eval" / "eval" / "teacher" / "results.json"
    kept = tmp_path / "kept" / "teacher-eval.tar.gz"
    before = scored.read_bytes(), kept.read_bytes()
    with pytest.raises(ScotdError, match=r"other settings \(limit differ\); move it aside"):
        _chains_curve().main([*args, "--eval-limit", "3"])
    monkeypatch.chdir(tmp_path)
    assert scored.read_bytes() == before[0]
    shutil.rmtree(tmp_path / "curve" / "teacher-eval")
    with pytest.raises(ScotdError, match=r"other settings \(limit differ\).*move .*teacher-eval.tar.gz aside"):
        _chains_curve().main([*args, "--eval-limit", "3"])
    assert kept.read_bytes() == before[1]


def test_the_teachers_dev_accuracies_are_the_plots_level_lines():
    """Both of the teacher's dev scores go beside the curve, and a score not measured draws no line."""
    study = _chains_curve()
    teacher = {"export": "teacher", "dev_greedy_fewshot": 0.37, "dev_greedy_fp32": 0.426, "per_chain": 0.295}
    assert study.teacher_references(teacher) == {"teacher, few-shot (as it sampled)": 0.37,
                                                 "teacher, zero-shot (fp32)": 0.426}
    assert study.teacher_references({"export": "teacher", "dev_greedy_fewshot": 0.37}) == {
        "teacher, few-shot (as it sampled)": 0.37}
