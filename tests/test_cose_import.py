"""`scotd corpus import cose`: CoS-E v1.11 human explanations as a corpus in the student format.

The fixture folder `fixtures/cose_data` is a small data folder in the official layouts (CSQA train/dev lines and
CoS-E lines), holding one line of each kind the importer must keep or count; the last test reads the real files.
"""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from scotd_harness import formats
from scotd_harness.cli import cli
from scotd_harness.corpus import read_corpus, write_corpus
from scotd_harness.corpus_import import COSE_TEACHER, import_cose
from scotd_harness.datasets import load_examples
from scotd_harness.errors import DataFormatError, ScotdError


@pytest.fixture
def cose_data(fixtures_dir, tmp_path):
    """A writable copy of the fixture data folder (tests corrupt lines in it)."""
    return shutil.copytree(fixtures_dir / "cose_data", tmp_path / "data")


def _import(root, split="train"):
    return import_cose(root, split, examples=load_examples("csqa", split, data_dir=root))


def test_rows_carry_the_human_explanation_in_the_student_format(cose_data):
    rows, report = _import(cose_data)
    by_id = {r.id: r for r in rows}
    assert list(by_id) == ["cose-q1", "cose-q5", "cose-q6"]
    q1 = by_id["cose-q1"]
    # the first explanation of q1, whitespace squashed; the gold label from the CSQA key (C -> c)
    assert q1.rationale == "Frozen food is kept cold in a freezer."
    assert (q1.answer, q1.prediction, q1.correct) == ("c", "c", True)
    assert q1.question == "Where would you keep frozen peas?" and q1.choices[2] == ["c", "freezer"]
    assert q1.student_input() == formats.student_input(q1.question, q1.choice_pairs)
    assert q1.student_target() == " Frozen food is kept cold in a freezer. So the answer is: (c)"
    assert formats.extract_answer(q1.student_target(), q1.choice_pairs) == "c"
    assert {r.teacher for r in rows} == {COSE_TEACHER} and {r.sample_index for r in rows} == {0}
    assert by_id["cose-q5"].answer == "b"  # a stated answer that agrees with the key is kept

    assert report.questions == 3 and report.chains == 3 and report.matches_gold == 3
    assert report.left_out == {
        "no rationale (empty, or nothing before 'the answer is')": 2,  # q2 blank, q3 opens with "The answer is"
        "id not in CSQA train": 1,
        "not among the questions asked for": 0,
        "repeated id": 1,
        "no gold label in CSQA": 0,
        "stated answer differs from the CSQA key": 1,  # q4 says "lamp", the key is A (umbrella)
    }
    lines = report.lines()
    assert "  left out: 1 (repeated id)" in lines and "  note: 3 of 6 CSQA train questions have no CoS-E row kept" in lines
    assert not any("no gold label" in line for line in lines)  # zero counts are not printed


def test_validation_split_reads_the_dev_file(cose_data):
    rows, report = _import(cose_data, "validation")
    assert [(r.id, r.answer, r.rationale) for r in rows] == [("cose-dev-1", "a", "The sky is above the clouds.")]
    assert rows[0].extra["split"] == "validation" and not report.notes


def test_cli_writes_the_corpus_and_prints_what_it_left_out(cose_data, tmp_path):
    out = tmp_path / "cose.jsonl"
    res = CliRunner().invoke(cli, ["corpus", "import", "cose", "--out", str(out), "--data-dir", str(cose_data)])
    assert res.exit_code == 0, res.output
    assert "left out: 2 (no rationale" in res.output and "left out: 1 (id not in CSQA train)" in res.output
    assert "wrote 3 chains" in res.output
    rows = list(read_corpus(out))
    assert [r.id for r in rows] == ["cose-q1", "cose-q5", "cose-q6"] and rows[0].extra["source"] == "cose-v1.11"

    # SOURCE may name the CoS-E file itself; --split outside train/validation is refused in one line
    res = CliRunner().invoke(cli, ["corpus", "import", "cose", str(cose_data / "cose_v1.11" / "cose_dev_v1.11.jsonl"),
                                   "--split", "validation", "--out", str(tmp_path / "dev.jsonl"), "--force",
                                   "--data-dir", str(cose_data)])
    assert res.exit_code == 0 and "wrote 1 chains" in res.output, res.output
    res = CliRunner().invoke(cli, ["corpus", "import", "cose", "--split", "test", "--out", str(tmp_path / "t.jsonl"),
                                   "--data-dir", str(cose_data)])
    assert res.exit_code == 1 and "train or validation" in res.output and "Traceback" not in res.output


def test_same_questions_as_another_corpus(cose_data, tmp_path):
    """`--same-questions CORPUS` keeps the questions of another arm's corpus, counting the rest."""
    rows, _ = _import(cose_data)
    other = tmp_path / "palm.jsonl"
    write_corpus([r for r in rows if r.id == "cose-q6"], other)
    out = tmp_path / "cose.jsonl"
    res = CliRunner().invoke(cli, ["corpus", "import", "cose", "--same-questions", str(other), "--out", str(out),
                                   "--data-dir", str(cose_data)])
    assert res.exit_code == 0, res.output
    assert [r.id for r in read_corpus(out)] == ["cose-q6"]
    assert "left out: 6 (not among the questions asked for)" in res.output  # q1 twice, q2 to q5
    assert "note: 0 of" not in res.output
    res = CliRunner().invoke(cli, ["corpus", "import", "distilling-step-by-step", "--same-questions", str(other),
                                   "--out", str(tmp_path / "x.jsonl")])
    assert res.exit_code == 1 and "--same-questions applies to cose only" in res.output


@pytest.mark.parametrize(("line", "field", "problem"), [
    ({"explanation": {"open-ended": "x"}}, "id", "missing"),
    ({"id": "cose-q1", "explanation": "x"}, "explanation", "expected an object"),
    ({"id": "cose-q1", "explanation": {"selected": "x"}}, "explanation.open-ended", "missing"),
    ({"id": "cose-q1", "explanation": {"open-ended": 3}}, "explanation.open-ended", "expected a string, got int"),
    ({"id": "cose-q1", "explanation": {"open-ended": "x"}, "answer": "spoon fork"}, "answer", "neither a choice"),
])
def test_a_bad_line_names_file_line_and_field_and_leaves_the_output_intact(cose_data, tmp_path, line, field, problem):
    path = cose_data / "cose_v1.11" / "cose_train_v1.11.jsonl"
    lines = path.read_text().splitlines()
    lines.insert(3, json.dumps(line))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as err:
        _import(cose_data)
    assert (err.value.path, err.value.line, err.value.field) == (str(path), 4, field)
    assert problem in str(err.value)

    out = tmp_path / "existing.jsonl"
    out.write_text("keep me\n")
    res = CliRunner().invoke(cli, ["corpus", "import", "cose", "--out", str(out), "--force", "--data-dir", str(cose_data)])
    assert res.exit_code == 1 and f"{path}:4: field {field!r}" in res.output and "Traceback" not in res.output
    assert out.read_text() == "keep me\n"


def test_missing_files_are_named(tmp_path, cose_data):
    with pytest.raises(ScotdError, match="no CoS-E v1.11 file cose_train_v1.11.jsonl at"):
        import_cose(tmp_path / "nowhere", "train", examples=[])
    with pytest.raises(ScotdError, match="needs the official CSQA questions"):
        import_cose(cose_data, "train")


def test_real_cose_train(data_dir):
    """All 9741 CSQA train questions have a CoS-E line; two open with "The answer is ..." and leave no rationale."""
    rows, report = import_cose(data_dir, "train", examples=load_examples("csqa", "train", data_dir=data_dir))
    assert len(rows) == 9741 - 2 and report.left_out["no rationale (empty, or nothing before 'the answer is')"] == 2
    assert sum(report.left_out.values()) == 2
    bum = next(r for r in rows if r.id == "3a1b3c21a11f4ec53c166b0559df7369")
    assert bum.rationale == "Bums are well known to take up residence under bridges."
    assert bum.student_target() == f" {bum.rationale} So the answer is: (d)" and bum.choice_pairs[3] == ("d", "bridge")
