"""Bad input to the CLI: one line `Error: ...` naming the option or the file, line and field, exit status 1, no
traceback, and every existing file byte for byte as it was. Driven through the real click CLI (`CliRunner`).

The input is checked before any model loads, so none of these cases needs an export.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from scotd_harness.cli import cli

GOOD_ROW = {"task": "csqa", "id": "q1", "sample_index": 0, "question": "Where is milk kept cold?",
            "choices": [["a", "fridge"], ["b", "oven"]], "answer": "a", "rationale": "Milk is kept in a fridge.",
            "prediction": "a", "correct": True}


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def assert_one_line_error(result, *fragments: str) -> str:
    """exit 1 from a clean `Error:` line (a crash would leave a non-SystemExit exception and a traceback)."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def snapshot(*paths):
    return {p: p.read_bytes() for p in paths}


# --- scotd infer -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "question, choices, fragments",
    [
        ("   ", "fridge|oven", ("--question", "empty")),
        ("Where is milk kept?", "fridge", ("--choices", "got 1", "at least two")),
        ("Where is milk kept?", "fridge||oven", ("--choices", "choice 2 (b) has no text")),
        ("Where is milk kept?", "|".join(f"c{i}" for i in range(11)), ("--choices", "got 11", "at most 10")),
    ],
)
def test_infer_malformed_question_or_choices(tmp_path, question, choices, fragments):
    assert_one_line_error(run("infer", str(tmp_path), "--question", question, "--choices", choices), *fragments)


@pytest.mark.parametrize(
    "line, field, problem",
    [
        ('{"question": "Is ice cold?", "choices": ', "<line>", "not valid JSON"),
        ('["Is ice cold?", ["yes", "no"]]', "<line>", "expected a JSON object"),
        ('{"choices": ["yes", "no"]}', "question", "missing"),
        ('{"question": null, "choices": ["yes", "no"]}', "question", "non-empty string"),
        ('{"question": "Is ice cold?", "choices": ["yes"]}', "choices", "got 1"),
        ('{"question": "Is ice cold?", "choices": [["a", "yes"], ["b", ""]]}', "choices", "has no text"),
        ('{"question": "Is ice cold?", "choices": "yes|no"}', "choices", "got str"),
        ('{"question": "Is ice cold?", "choices": ["yes", "no"], "answer": "z"}', "answer", "not an answer label"),
    ],
)
def test_infer_input_file_errors_name_file_line_and_field(tmp_path, line, field, problem):
    src = tmp_path / "questions.jsonl"
    src.write_text(json.dumps({"question": "Is fire hot?", "choices": ["yes", "no"]}) + "\n" + line + "\n")
    before = snapshot(src)
    result = run("infer", str(tmp_path), "--input", str(src))
    assert_one_line_error(result, f"questions.jsonl:2: field {field!r}", problem)
    assert snapshot(src) == before


def test_infer_refuses_a_directory_that_is_no_export(tmp_path):
    result = run("infer", str(tmp_path), "--question", "Where is milk kept?", "--choices", "fridge|oven")
    assert_one_line_error(result, "scotd.json is missing", "scotd export")


# --- scotd corpus --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, field, problem",
    [
        ({"rationale": None}, "rationale", "expected a string, got null"),
        ({"rationale": 7}, "rationale", "expected a string, got 7"),
        ({"prediction": None}, "prediction", "expected a string"),
        ({"prediction": "e"}, "prediction", "choice labels ['a', 'b']"),
        ({"question": ["x"]}, "question", "expected a string"),
        ({"sample_index": True}, "sample_index", "expected an int, got true"),
        ({"choices": [["a", "fridge"], ["b", None]]}, "choices", "pairs of strings"),
        ({"correct": "yes"}, "correct", "true or false"),
        ({"logprob": "low"}, "logprob", "a number"),
    ],
)
def test_corpus_line_with_a_bad_field_names_file_line_and_field(tmp_path, change, field, problem):
    corpus = tmp_path / "corpus.jsonl"
    bad = {**GOOD_ROW, "id": "q2", **change}
    corpus.write_text(json.dumps(GOOD_ROW) + "\n" + json.dumps(bad) + "\n")
    out = tmp_path / "kept.jsonl"
    out.write_text("an earlier filter's output\n")
    before = snapshot(corpus, out)
    for args in (("corpus", "filter", str(corpus), "--out", str(out), "--force"), ("corpus", "stats", str(corpus))):
        assert_one_line_error(run(*args), f"corpus.jsonl:2: field {field!r}", problem)
    assert snapshot(corpus, out) == before


def test_corpus_line_missing_a_required_field(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({k: v for k, v in GOOD_ROW.items() if k != "rationale"}) + "\n")
    assert_one_line_error(run("corpus", "stats", str(corpus)), "corpus.jsonl:1: field 'rationale': missing")


def test_corpus_filter_list_needs_no_corpus_and_filtering_needs_both(tmp_path):
    result = run("corpus", "filter", "--list")
    assert result.exit_code == 0, result.output
    assert "correct: options" in result.output and "diversity-k: options" in result.output
    result = run("corpus", "filter", "--out", str(tmp_path / "x.jsonl"))
    assert result.exit_code == 2 and "give CORPUS and --out" in result.output
    assert not (tmp_path / "x.jsonl").exists()


def test_corpus_import_of_a_broken_release_file(tmp_path):
    release = tmp_path / "csqa_30x.json"
    release.write_text('[{"prompt": "Q: x", "response": "y",\n "score": 1.0 "index": 0}]')
    out = tmp_path / "imported.jsonl"
    out.write_text("kept\n")
    before = snapshot(release, out)
    result = run("corpus", "import", "scotd-release", str(release), "--out", str(out), "--force")
    assert_one_line_error(result, "csqa_30x.json:2", "not valid JSON")
    release.write_text(json.dumps([{"prompt": None, "response": "y", "score": 1.0, "index": 0}]))
    result = run("corpus", "import", "scotd-release", str(release), "--out", str(out), "--force")
    assert_one_line_error(result, "csqa_30x.json[0]", "'prompt'", "expected str, got NoneType")
    assert out.read_bytes() == before[out]


# --- scotd report --------------------------------------------------------------------------------------------------


def test_report_on_a_run_with_a_broken_config(tmp_path):
    (tmp_path / "config.json").write_text('{"task": "demo",')
    result = run("report", str(tmp_path))
    assert_one_line_error(result, "config.json:1", "not valid JSON")
    assert not (tmp_path / "report.md").exists()


@pytest.mark.parametrize("model_type, folder_holds", [("hf", "notes.txt"), ("scotd-onnx", "config.json")])
def test_eval_of_a_folder_that_is_not_a_model_is_a_clean_error(tmp_path, model_type, folder_holds):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / folder_holds).write_text("{}")
    result = CliRunner().invoke(cli, ["eval", str(folder), "--tasks", "scotd_csqa", "--model-type", model_type,
                                      "--output", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    needs = "scotd.json" if model_type == "scotd-onnx" else "config.json"
    assert "is not" in result.output and f"(no {needs})" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    missing = CliRunner().invoke(cli, ["eval", str(tmp_path / "nowhere"), "--tasks", "scotd_csqa"])
    assert missing.exit_code == 1 and "not found" in missing.output
