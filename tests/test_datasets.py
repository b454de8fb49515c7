"""Dataset registry on the real official files (counts from the releases) and on small hand-written fixtures."""

import pytest

from scotd_harness.datasets import TASKS, load_examples
from scotd_harness.errors import DataFormatError, ScotdError


@pytest.mark.parametrize(
    "task, split, count, n_choices",
    [
        ("csqa", "train", 9741, 5),
        ("csqa", "validation", 1221, 5),
        ("openbookqa", "train", 4957, 4),
        ("openbookqa", "validation", 500, 4),
        ("quarel", "train", None, 2),  # the partial rebuild (830) or the official file (1941)
        ("imdb_original", "validation", 100, 2),
        ("imdb_contrast", "validation", 100, 2),
        ("csqa2", "train", 9264, 2),
    ],
)
def test_official_files(data_dir, quarel_train_size, task, split, count, n_choices):
    count = count or quarel_train_size
    examples = load_examples(task, split, data_dir=data_dir)
    assert len(examples) == count
    assert len({ex.id for ex in examples}) == count
    assert all(len(ex.choices) == n_choices == TASKS[task][1] for ex in examples)
    assert all(ex.answer in {label for label, _ in ex.choices} for ex in examples)
    assert all(ex.question and all(text for _, text in ex.choices) for ex in examples)


def test_csqa_first_dev_example_matches_the_release(data_dir):
    ex = load_examples("csqa", "validation", data_dir=data_dir, limit=1)[0]
    assert ex.id == "1afa02df02c908a558b4036e80242fac"
    assert ex.choices[0] == ("a", "bank") and ex.answer == "a"


def test_imdb_original_and_contrast_pair_up_with_flipped_labels(data_dir):
    orig = load_examples("imdb_original", "validation", data_dir=data_dir)
    contrast = load_examples("imdb_contrast", "validation", data_dir=data_dir)
    assert [e.id for e in orig] == [e.id for e in contrast]
    flipped = sum(o.answer != c.answer for o, c in zip(orig, contrast))
    assert flipped >= 95  # contrast edits flip the label (a few pairs in the release do not)


def test_holdout_is_a_fixed_disjoint_tenth(data_dir, quarel_train_size):
    fit = load_examples("quarel", "train-fit", data_dir=data_dir)
    holdout = load_examples("quarel", "train-holdout", data_dir=data_dir)
    assert len(fit) + len(holdout) == quarel_train_size and 0.06 < len(holdout) / quarel_train_size < 0.14
    assert not {e.id for e in fit} & {e.id for e in holdout}
    assert [e.id for e in holdout] == [e.id for e in load_examples("quarel", "train-holdout", data_dir=data_dir)]


def test_quarel_fixture_options_are_split_from_the_question(fixtures_dir):
    examples = load_examples("quarel", "train", data_dir=fixtures_dir / "data")
    assert examples[0].question == "A sled slides farther on ice than on gravel because ice has"
    assert examples[0].choices == (("a", "less friction"), ("b", "more friction")) and examples[0].answer == "a"
    assert [e.answer for e in examples] == ["a", "b", "a"]


def test_csqa2_is_two_choices_yes_no(fixtures_dir):
    examples = load_examples("csqa2", "validation", data_dir=fixtures_dir / "data")
    assert [e.answer for e in examples] == ["b", "a"]
    assert examples[0].question == "Is this true? a fish can live without water"
    assert examples[1].question == "Do people drink coffee?"


def test_imdb_fixture_cleans_markup_and_rejects_an_unknown_sentiment(fixtures_dir):
    contrast = load_examples("imdb_contrast", "validation", data_dir=fixtures_dir / "data")
    assert contrast[0].question.startswith("A cold, unfunny film. Hated it.\n")
    with pytest.raises(DataFormatError) as err:
        load_examples("imdb_original", "validation", data_dir=fixtures_dir / "data")
    assert "dev_original.tsv:4" in str(err.value) and "'Sentiment'" in str(err.value) and "Meh" in str(err.value)


def test_unknown_answer_key_names_file_line_and_field(fixtures_dir):
    with pytest.raises(DataFormatError) as err:
        load_examples("csqa", "validation", data_dir=fixtures_dir / "data")
    msg = str(err.value)
    assert "dev_rand_split.jsonl:2" in msg and "'answerKey'" in msg and "'F'" in msg


def test_malformed_json_line_names_file_and_line(fixtures_dir):
    with pytest.raises(DataFormatError) as err:
        load_examples("csqa", "train", data_dir=fixtures_dir / "data")
    assert "train_rand_split.jsonl:2" in str(err.value) and "not valid JSON" in str(err.value)


def test_quarel_answer_index_out_of_range(fixtures_dir):
    with pytest.raises(DataFormatError) as err:
        load_examples("quarel", "validation", data_dir=fixtures_dir / "data")
    assert "quarel-v1-dev.jsonl:2" in str(err.value) and "'answer_index'" in str(err.value)


def test_missing_official_file_and_unknown_names(fixtures_dir, tmp_path):
    with pytest.raises(ScotdError, match="train-holdout"):
        load_examples("openbookqa", "train", data_dir=fixtures_dir / "data")
    with pytest.raises(ScotdError, match="unknown task"):
        load_examples("gsm8k", "train", data_dir=tmp_path)
    with pytest.raises(ScotdError, match="unknown split"):
        load_examples("csqa", "dev2", data_dir=tmp_path)
    with pytest.raises(ScotdError, match="does not exist"):
        load_examples("csqa", "train", data_dir=tmp_path / "nowhere")


def test_data_dir_comes_from_the_environment(fixtures_dir, monkeypatch):
    monkeypatch.setenv("SCOTD_DATA_DIR", str(fixtures_dir / "data"))
    assert [e.id for e in load_examples("quarel", "train")] == ["fixture-quarel-1", "fixture-quarel-2", "fixture-quarel-3"]


def test_hub_route_is_taken_without_a_data_dir(monkeypatch):
    """Offline here, the hub loader must fail with a message that names the remedy, not a stack of hub errors."""
    monkeypatch.delenv("SCOTD_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ScotdError, match="tau/commonsense_qa.*SCOTD_DATA_DIR"):
        load_examples("csqa", "validation")


def _sha1_int(key: str) -> int:
    import hashlib

    return int(hashlib.sha1(key.encode()).hexdigest(), 16)


def test_hash_subsets_keep_their_published_membership(data_dir):
    """One hash-split function serves train-holdout and training's dev slice; both sets must stay what they were
    (results were published on them): holdout = sha1 % 10 == 0, dev slice = sha1 % 10_000 < fraction * 10_000."""
    from scotd_harness.datasets import in_holdout
    from scotd_harness.hashsplit import in_hash_fraction

    ids = [ex.id for ex in load_examples("csqa", "train", data_dir=data_dir)]
    holdout = {i for i in ids if in_holdout(i)}
    assert holdout == {i for i in ids if _sha1_int(i) % 10 == 0}
    assert {e.id for e in load_examples("csqa", "train-holdout", data_dir=data_dir)} == holdout
    assert len(holdout) == 960
    for fraction in (0.0, 0.02, 0.05, 0.1, 0.3):
        dev = {i for i in ids if in_hash_fraction(i, fraction)}
        assert dev == {i for i in ids if fraction > 0 and _sha1_int(i) % 10_000 < fraction * 10_000}
    assert 0 < len({i for i in ids if in_hash_fraction(i, 0.05)}) < len(holdout)


def test_jsonl_reader_names_file_and_line_and_tolerates_only_a_torn_tail(tmp_path):
    import gzip

    from scotd_harness.jsonl import iter_jsonl

    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": ')
    assert [r for _, r in iter_jsonl(path, tolerate_torn_tail=True)] == [{"a": 1}, {"a": 2}]
    with pytest.raises(DataFormatError, match=r"x\.jsonl:4: .*not valid JSON"):
        list(iter_jsonl(path))
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')  # a broken line in the middle is never a torn tail
    with pytest.raises(DataFormatError, match=r"x\.jsonl:2: "):
        list(iter_jsonl(path, tolerate_torn_tail=True))
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataFormatError, match=r"x\.jsonl:2: .*expected a JSON object, got list"):
        list(iter_jsonl(path))
    gz = tmp_path / "y.json.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write('{"b": 1}\n{"b": 2}\n')
    assert list(iter_jsonl(gz)) == [(1, {"b": 1}), (2, {"b": 2})]
