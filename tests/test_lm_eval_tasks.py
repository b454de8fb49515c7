"""The scotd_* lm-eval tasks: their files, their hooks into formats and the registry, and the stock `lm_eval` CLI
finding and running them after `pip install` (the .pth hook), with lm-eval's own tasks and models untouched."""

from __future__ import annotations

import glob
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scotd_harness import formats, lm_eval_hook
from scotd_harness.datasets import TASKS
from scotd_harness.errors import ScotdError

DATASETS = ["csqa", "quarel", "openbookqa", "imdb_original", "imdb_contrast", "csqa2", "demo"]
VARIANTS = ("", "_sc", "_fewshot", "_direct")
ALL_TASKS = sorted(f"scotd_{d}{v}" for d in DATASETS for v in VARIANTS)
TAGS = {"scotd": {"scotd_csqa", "scotd_quarel", "scotd_openbookqa"},
        "scotd_challenge": {"scotd_imdb_original", "scotd_imdb_contrast", "scotd_csqa2"}}


def _env(data_dir: Path) -> dict:
    return {**os.environ, "SCOTD_DATA_DIR": str(data_dir), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _lm_eval_cli() -> list[str]:
    """The installed `lm_eval` console script next to this interpreter (else `python -m lm_eval`, the same CLI)."""
    script = shutil.which("lm_eval", path=str(Path(sys.executable).parent)) or shutil.which("lm_eval")
    return [script] if script else [sys.executable, "-m", "lm_eval"]


def _task_configs() -> dict[str, dict]:
    from lm_eval.tasks._yaml_loader import load_yaml

    configs = {}
    for path in sorted(lm_eval_hook.tasks_dir().rglob("*.yaml")):
        cfg = load_yaml(path, resolve_func=False)
        if "task" in cfg:
            configs[cfg["task"]] = cfg
    return configs


# ----------------------------------------------------------------------------------------------- task files


def test_every_dataset_has_four_variants_and_the_tags():
    configs = _task_configs()
    assert set(ALL_TASKS) <= set(configs)
    datasets = {cfg["dataset_kwargs"]["scotd_task"] for cfg in configs.values()}
    assert sorted(configs) == sorted(f"scotd_{d}{v}" for d in datasets for v in VARIANTS)
    for name, cfg in configs.items():
        assert cfg["dataset_kwargs"]["scotd_task"] in TASKS
        assert name.startswith(f"scotd_{cfg['dataset_kwargs']['scotd_task']}")
        assert cfg["validation_split"] == "validation" and "test_split" not in cfg
    tagged: dict[str, set] = {}
    for name, cfg in configs.items():
        for tag in [cfg["tag"]] if isinstance(cfg.get("tag"), str) else cfg.get("tag") or []:
            tagged.setdefault(tag, set()).add(name)
    assert tagged == TAGS


def test_generation_settings_follow_formats():
    """The YAMLs cannot import formats.STOP_STRINGS, so this pins their copy to it."""
    for name, cfg in _task_configs().items():
        if name.endswith("_direct"):
            assert cfg["output_type"] == "multiple_choice" and not cfg.get("generation_kwargs")
            continue
        gen = cfg["generation_kwargs"]
        assert cfg["output_type"] == "generate_until"
        assert tuple(gen["until"]) == formats.STOP_STRINGS, name
        assert gen["max_gen_toks"] == 128
        if name.endswith("_sc"):
            assert gen["do_sample"] and cfg["repeats"] >= 8
            assert [f["name"] for f in cfg["filter_list"]] == ["maj@N", "maj@8"]
        else:
            assert gen["do_sample"] is False and cfg.get("repeats", 1) == 1


# ----------------------------------------------------------------------------------------------- utils (hooks)


@pytest.fixture(scope="module")
def utils():
    from scotd_harness.tasks import utils

    return utils


@pytest.fixture(scope="module")
def csqa_docs(utils, data_dir):
    return utils.load_dataset("csqa", version=1.0, pretrained="ignored", scotd_data_dir=str(data_dir))["validation"]


def test_docs_come_from_the_registry(csqa_docs, data_dir):
    from scotd_harness.datasets import load_examples

    examples = load_examples("csqa", "validation", data_dir=data_dir)
    assert len(csqa_docs) == len(examples) == 1221
    doc, ex = csqa_docs[0], examples[0]
    assert (doc["id"], doc["question"], doc["answer"], doc["split"]) == (ex.id, ex.question, ex.answer, "validation")
    assert [tuple(c) for c in doc["choices"]] == list(ex.choices)


def test_prompts_are_the_formats_ones(utils, csqa_docs):
    from scotd_harness.prompts import load_prompt

    doc = csqa_docs[0]
    choices = [tuple(c) for c in doc["choices"]]
    assert utils.doc_to_text(doc) == formats.student_input(doc["question"], choices)
    assert utils.doc_to_text_fewshot(doc) == load_prompt("csqa").render(doc["question"], choices)
    assert utils.doc_to_text_fewshot(doc).endswith(utils.doc_to_text(doc))
    assert utils.doc_to_choice_direct(doc) == [formats.direct_target(label) for label, _ in choices]
    assert utils.doc_to_choice_direct(doc)[utils.doc_to_target_direct(doc)] == formats.direct_target(doc["answer"])


def test_extraction_vote_and_metrics(utils):
    doc = {"choices": [["a", "red"], ["b", "blue"], ["c", "green"]], "answer": "b"}
    chains = [" Sky. So the answer is: (b)", " The answer is green.", " no idea", " So the answer is: (b)\n\nQ: (c)"]
    (labels,) = utils.ExtractAnswer().apply([chains], [doc])
    assert labels == ["b", "c", formats.INVALID, "b"]
    assert list(utils.MajorityVote().apply([labels], [doc])) == [["b"]]
    assert list(utils.MajorityVote().apply([[formats.INVALID] * 3], [doc])) == [[formats.INVALID]]
    assert utils.process_results(doc, ["b"]) == {"acc": 1.0, "invalid_rate": 0.0}
    assert utils.process_results(doc, ["a"]) == {"acc": 0.0, "invalid_rate": 0.0}
    assert utils.process_results(doc, [formats.INVALID]) == {"acc": 0.0, "invalid_rate": 1.0}
    lls = [(-3.0, False), (-1.0, True), (-2.0, False)]
    assert utils.process_results_direct(doc, lls) == {"acc": 1.0, "invalid_rate": 0.0}


def test_missing_official_split_says_how_to_pick_another(utils, data_dir, tmp_path):
    """Without QuaRel's official dev file: a clear error naming the way out, no faked data."""
    without_dev = tmp_path / "data"
    (without_dev / "quarel").mkdir(parents=True)
    (without_dev / "quarel" / "quarel-v1-train.jsonl").symlink_to(data_dir / "quarel" / "quarel-v1-train.jsonl")
    with pytest.raises(ScotdError, match="scotd_split"):
        utils.load_dataset("quarel", scotd_data_dir=str(without_dev))
    docs = utils.load_dataset("quarel", scotd_data_dir=str(data_dir), scotd_split="train-holdout")["validation"]
    assert len(docs) > 0 and set(docs["split"]) == {"train-holdout"}


# ----------------------------------------------------------------------------------------------- discovery hook


def test_pth_file_is_installed():
    # Every scotd-harness distribution on the path: a checkout's own *.egg-info folder may come first.
    dists = importlib.metadata.distributions(name="scotd-harness")
    pth = [f for d in dists for f in d.files or [] if f.name == lm_eval_hook.PTH_NAME]
    assert pth, f"{lm_eval_hook.PTH_NAME} is not among the installed files (reinstall: pip install -e .)"
    assert Path(pth[0].locate()).read_text(encoding="utf-8") == lm_eval_hook.PTH_LINE


def test_startup_of_other_programs_loads_nothing():
    """A program that never imports lm_eval loads neither lm_eval nor this package; lm_eval alone loads only the
    hook, and the TaskManager patch happens when lm_eval.tasks is imported."""
    code = (
        "import sys, json; before = sorted(m for m in sys.modules if m.startswith(('scotd', 'lm_eval')));"
        "import lm_eval; mid = 'scotd_harness.lm_eval_hook' in sys.modules;"
        "import lm_eval.tasks; patched = getattr(lm_eval.tasks.TaskManager.__init__, '__scotd_tasks__', False);"
        "print(json.dumps([before, mid, patched]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after_lm_eval, patched = json.loads(out)
    assert before == [] and after_lm_eval is False and patched is True


def test_include_path_is_not_doubled():
    ours = lm_eval_hook.tasks_dir()
    assert lm_eval_hook.with_scotd_tasks(None) == [ours]
    assert lm_eval_hook.with_scotd_tasks("/elsewhere") == [ours, "/elsewhere"]
    assert lm_eval_hook.with_scotd_tasks([str(ours) + "/"]) == [str(ours) + "/"]


def test_onnx_model_is_registered_only_where_its_module_exists(monkeypatch):
    """A missing adapter module leaves `scotd-onnx` unregistered, so lm-eval gives its own unknown-model error."""
    assert lm_eval_hook.onnx_model_available()
    monkeypatch.setattr(lm_eval_hook, "ONNX_MODEL_MODULE", "scotd_harness.export.no_such_module")
    assert not lm_eval_hook.onnx_model_available()


@pytest.mark.slow
def test_stock_task_manager_lists_scotd_tasks_and_keeps_its_own(data_dir):
    """A fresh interpreter (the .pth hook, no --include_path): all 24 tasks and both tags, lm-eval's own
    commonsense_qa and openbookqa, and lm-eval's own models."""
    code = (
        "import json; from lm_eval.tasks import TaskManager; from lm_eval.api.registry import get_model;"
        "tm = TaskManager(); names = tm.all_tasks;"
        "print(json.dumps({'scotd': [n for n in names if n.startswith('scotd')], 'tags': tm.all_tags,"
        " 'theirs': [n for n in ('commonsense_qa', 'openbookqa') if n in names],"
        " 'glob': tm.match_tasks(['scotd_*']), 'hf': get_model('hf').__name__,"
        " 'onnx': get_model('scotd-onnx').__name__}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(data_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(ALL_TASKS) <= set(got["scotd"])
    assert set(TAGS) <= set(got["tags"])
    assert got["theirs"] == ["commonsense_qa", "openbookqa"]
    assert set(ALL_TASKS) <= set(got["glob"])
    assert got["hf"] == "HFLM" and got["onnx"] == "ScotdOnnxLM"


@pytest.mark.slow
def test_misspelled_task_fails_with_lm_evals_message(data_dir, embedded_model_dir, tmp_path):
    proc = subprocess.run(
        [*_lm_eval_cli(), "--model", "hf", "--model_args", f"pretrained={embedded_model_dir}",
         "--tasks", "scotd_csqaa", "--limit", "1", "--device", "cpu"],
        capture_output=True, text=True, env=_env(data_dir), cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "Tasks not found: scotd_csqaa" in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------------------------- a real run


@pytest.mark.slow
def test_stock_cli_runs_greedy_and_self_consistency(data_dir, embedded_model_dir, tmp_path):
    """`lm_eval` on real CSQA and OBQA dev questions with the embedded model: greedy rows and maj@N / maj@8 rows,
    each with accuracy and the share of unparsable outputs. The self-consistency task is the installed
    scotd_openbookqa_sc with N set to 8 the documented way (a YAML that includes it); few questions and short
    chains keep it quick."""
    sc_yaml = tmp_path / "obqa_sc8.yaml"
    sc_yaml.write_text(
        f"include: {lm_eval_hook.tasks_dir() / 'openbookqa' / 'scotd_openbookqa_sc.yaml'}\n"
        "task: scotd_openbookqa_sc8\nrepeats: 8\n"
    )
    out = tmp_path / "out"
    proc = subprocess.run(
        [*_lm_eval_cli(), "--model", "hf", "--model_args", f"pretrained={embedded_model_dir}",
         "--tasks", f"scotd_csqa,scotd_openbookqa,{sc_yaml}", "--limit", "2", "--device", "cpu",
         "--batch_size", "16", "--gen_kwargs", "max_gen_toks=16", "--output_path", str(out)],
        capture_output=True, text=True, env=_env(data_dir), cwd=tmp_path, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "invalid_rate" in proc.stdout and "maj@8" in proc.stdout
    (results_file,) = glob.glob(str(out / "*" / "results_*.json"))
    report = json.loads(Path(results_file).read_text())
    assert report["configs"]["scotd_openbookqa_sc8"]["repeats"] == 8
    rows = {"scotd_csqa": ["greedy"], "scotd_openbookqa": ["greedy"], "scotd_openbookqa_sc8": ["maj@N", "maj@8"]}
    for task, filters in rows.items():
        assert report["results"][task]["sample_len"] == 2
        for f in filters:
            assert 0.0 <= report["results"][task][f"acc,{f}"] <= 1.0
            assert 0.0 <= report["results"][task][f"invalid_rate,{f}"] <= 1.0
