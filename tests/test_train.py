"""Student training: target-only labels, balanced chain sampling, bad input, a real short run on the embedded
model, label-only, packing, LoRA, dev-set selection, multi-process `accelerate launch` and resume after a kill.

The heavier runs use a tiny random Llama with the embedded tokenizer, so they check the mechanics in seconds."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scotd_harness import formats
from scotd_harness.corpus import read_corpus
from scotd_harness.errors import ScotdError

CORPUS_NAME = "tiny_csqa_corpus.jsonl"


@pytest.fixture(scope="module")
def corpus(fixtures_dir) -> Path:
    return fixtures_dir / CORPUS_NAME


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, embedded_model_dir) -> Path:
    """A 2-layer, 64-wide random Llama with the embedded tokenizer, saved as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=2, pad_token_id=2, bos_token_id=1, tie_word_embeddings=True)
    AutoModelForCausalLM.from_config(config).save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(embedded_model_dir / name, out / name)
    return out


def config(tmp_path, student, corpus, **kw):
    from scotd_harness.train import DistillConfig

    base = dict(student=str(student), corpus=str(corpus), output_dir=str(tmp_path / "student"), max_length=160,
                per_device_train_batch_size=2, max_steps=2, save_steps=100, logging_steps=1, seed=0,
                disable_tqdm=True, dataloader_pin_memory=False, use_cpu=True)
    base.update(kw)
    return DistillConfig(**base)


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def fixture_rows(corpus) -> list[dict]:
    return [json.loads(line) for line in corpus.read_text().splitlines() if line.strip()]


# --- examples and labels ---------------------------------------------------------------------------------------


def test_prompt_tokens_are_masked_and_target_is_the_formats_text(tmp_path, corpus, embedded_model_dir):
    from scotd_harness.train import IGNORE_INDEX, CorpusStats, build_questions, load_tokenizer

    tokenizer, _ = load_tokenizer(str(embedded_model_dir))
    rows = list(read_corpus(corpus))
    stats = CorpusStats()
    questions = build_questions(rows, tokenizer, config(tmp_path, embedded_model_dir, corpus), stats)
    assert stats.dropped == {"no parsed answer": 1}  # the fixture's "[invalid]" chain
    assert len(questions) == 6 and stats.chains == 11
    first = next(r for r in rows if r.id == "q1" and r.sample_index == 0)
    ex = questions[0].example(0)
    n_prompt = len(tokenizer(first.student_input(), add_special_tokens=False)["input_ids"])
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert all(label != IGNORE_INDEX for label in ex["labels"][n_prompt:])
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert tokenizer.decode(ex["input_ids"][:n_prompt]) == first.student_input()
    target = tokenizer.decode(ex["labels"][n_prompt:])
    assert target == first.student_target() + tokenizer.eos_token
    assert target.startswith(" ") and target.endswith("So the answer is: (a)" + tokenizer.eos_token)


def test_dev_questions_holds_out_that_many_and_trains_on_every_other_one(tmp_path, corpus, embedded_model_dir,
                                                                         caplog):
    """A dev fraction cut to max_dev_questions leaves the rest of the fraction out of training unused (and says
    so); dev_questions holds out just the questions it scores, chosen among those with a usable chain (a question
    first by hash whose chains all fail to parse is neither held out nor trained on), and trains on the others."""
    from scotd_harness.hashsplit import hash_rank
    from scotd_harness.train import load_tokenizer, prepare_data

    rows = [{**r, "id": f"{r['id']}-{k}"} for k in range(4) for r in fixture_rows(corpus)]  # 24 usable questions
    first_usable = min((r["id"] for r in rows), key=hash_rank)
    # questions whose one chain has no parsed answer, ahead of every usable one in the hash order
    unusable = [f"x{k}" for k in range(200) if hash_rank(f"x{k}") < hash_rank(first_usable)][:3]
    assert unusable
    rows += [{**rows[0], "id": qid, "rationale": "no letter here", "prediction": "[invalid]", "correct": False}
             for qid in unusable]
    many = write_rows(tmp_path / "many.jsonl", rows)
    tokenizer, _ = load_tokenizer(str(embedded_model_dir))

    def split(**kw) -> tuple[set[str], set[str]]:
        train_ds, dev_ds, stats, _ = prepare_data(config(tmp_path, embedded_model_dir, many, **kw), tokenizer)
        assert stats.dev_questions == len(dev_ds.questions) and stats.questions == len(train_ds.questions)
        return {q.key[1] for q in train_ds.questions}, {q.key[1] for q in dev_ds.questions}

    caplog.set_level("WARNING", logger="scotd_harness.train")
    trained, scored = split(dev_fraction=0.5, max_dev_questions=2)
    assert len(scored) == 2 and len(trained) + len(scored) < 24
    assert f"{24 - len(trained) - 2} held-out questions (dev_fraction 0.5) are neither trained on nor scored" in (
        caplog.text)
    caplog.clear()
    trained_all, scored_instead = split(dev_questions=2)
    assert len(scored_instead) == 2 and len(trained_all) == 22 and not trained_all & scored_instead
    assert not scored_instead & set(unusable) and "neither trained on" not in caplog.text
    other = write_rows(tmp_path / "dev.jsonl", [{**r, "id": f"d-{r['id']}"} for r in fixture_rows(corpus)])
    trained_beside, scored_beside = split(dev_questions=2, dev_corpus=str(other))  # the dev corpus's 6 and 2 more
    assert scored_beside == scored_instead | {f"d-q{k}" for k in range(1, 7)} and trained_beside == trained_all
    with pytest.raises(ScotdError, match="not both"):
        config(tmp_path, embedded_model_dir, many, dev_questions=2, dev_fraction=0.1)
    with pytest.raises(ScotdError, match="give dev_questions 2 alone"):
        config(tmp_path, embedded_model_dir, many, dev_questions=4, max_dev_questions=2)
    with pytest.raises(ScotdError, match="would hold out all its 24 usable questions"):
        split(dev_questions=24)


def test_label_only_targets_are_the_direct_answer(tmp_path, corpus, embedded_model_dir):
    from scotd_harness.train import IGNORE_INDEX, CorpusStats, build_questions, load_tokenizer

    tokenizer, _ = load_tokenizer(str(embedded_model_dir))
    cfg = config(tmp_path, embedded_model_dir, corpus, label_only=True)
    questions = build_questions(list(read_corpus(corpus)), tokenizer, cfg, CorpusStats())
    assert len(questions) == 6 and all(len(q.targets) == 1 for q in questions)
    ex = questions[1].example(0)
    target = [t for t in ex["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(target) == formats.direct_target("b") + tokenizer.eos_token


def test_balanced_draw_is_deterministic_per_epoch_and_covers_chains():
    from scotd_harness.train import BalancedChainDataset, Question

    questions = [Question(("csqa", f"q{i}"), [1], [[10 + j] for j in range(4)]) for i in range(20)]
    a, b = BalancedChainDataset(questions, seed=3), BalancedChainDataset(questions, seed=3)
    draws = []
    for epoch in range(4):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        draws.append([a[i]["input_ids"][1] for i in range(len(a))])
        assert draws[-1] == [b[i]["input_ids"][1] for i in range(len(b))]
        assert len(a) == 20  # one example per question per epoch
    assert len({tuple(d) for d in draws}) > 1  # a new draw each epoch
    assert {x for d in draws for x in d} == {10, 11, 12, 13}
    other = BalancedChainDataset(questions, seed=4)
    other.set_epoch(0)
    assert [other[i]["input_ids"][1] for i in range(20)] != draws[0]


def test_epoch_callback_gives_the_epoch_the_trainer_is_in():
    """A fresh epoch starts at a whole state.epoch; a resumed one at the checkpoint's fraction (same epoch)."""
    from types import SimpleNamespace

    from scotd_harness.train import BalancedChainDataset, _EpochCallback

    ds = BalancedChainDataset([], seed=0)
    callback = _EpochCallback(ds)
    cases = [(None, 0), (0.0, 0), (1.0, 1), (1.37, 1), (2.9999999, 3), (3.0, 3)]  # 2.9999999: float error at 3
    for state_epoch, expected in cases:
        callback.on_epoch_begin(None, SimpleNamespace(epoch=state_epoch), None)
        assert ds.epoch == expected, state_epoch


def test_packed_batch_does_not_attend_across_examples(tmp_path, corpus, embedded_model_dir):
    """Packing concatenates examples with restarting position ids: each example's logits must equal its logits
    alone, and the loss the padded batch's (a random model is too insensitive to context to show a leak)."""
    import torch
    from transformers import AutoModelForCausalLM

    from scotd_harness.train import CorpusStats, PadCollator, build_questions, load_tokenizer, make_collator

    tokenizer, _ = load_tokenizer(str(embedded_model_dir))
    cfg = config(tmp_path, embedded_model_dir, corpus, batching="packed")
    questions = build_questions(list(read_corpus(corpus)), tokenizer, cfg, CorpusStats())
    features = [q.example(0) for q in questions[:3]]
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir).eval()  # config.use_cache is True here
    with torch.no_grad():
        packed_batch = make_collator(cfg, tokenizer)(features)
        assert packed_batch["input_ids"].shape[0] == 1 and "position_ids" in packed_batch
        packed = model(**packed_batch)
        padded = model(**PadCollator(tokenizer.pad_token_id)(features))
        offset = 0
        for f in features:
            n = len(f["input_ids"])
            alone = model(input_ids=torch.tensor([f["input_ids"]])).logits[0]
            assert torch.allclose(alone, packed.logits[0, offset:offset + n], atol=1e-3)
            offset += n
    assert torch.allclose(padded.loss, packed.loss, atol=1e-4), (padded.loss, packed.loss)


# --- bad input ---------------------------------------------------------------------------------------------------


def test_empty_corpus_is_refused(tmp_path, tiny_llama):
    from scotd_harness.train import train

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ScotdError, match="holds no rows"):
        train(config(tmp_path, tiny_llama, empty))


def test_corpus_of_another_task_is_refused(tmp_path, corpus, tiny_llama):
    from scotd_harness.train import train

    with pytest.raises(ScotdError, match="task.*quarel"):
        train(config(tmp_path, tiny_llama, corpus, task="quarel"))
    rows = fixture_rows(corpus)
    rows[0]["task"] = "openbookqa"
    mixed = write_rows(tmp_path / "mixed.jsonl", rows)
    with pytest.raises(ScotdError, match="mixes tasks"):
        train(config(tmp_path, tiny_llama, mixed))


def test_chains_without_a_parsed_answer_are_dropped_or_refused(tmp_path, corpus, tiny_llama):
    from scotd_harness.train import train

    rows = [dict(r, prediction=formats.INVALID) for r in fixture_rows(corpus)]
    invalid = write_rows(tmp_path / "invalid.jsonl", rows)
    with pytest.raises(ScotdError, match="no usable example"):
        train(config(tmp_path, tiny_llama, invalid))


def test_student_without_pad_token_pads_with_eos_and_says_so(tmp_path, tiny_llama, caplog):
    from scotd_harness.train import load_tokenizer

    copy = tmp_path / "nopad"
    shutil.copytree(tiny_llama, copy)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        d = json.loads((copy / name).read_text())
        d.pop("pad_token", None)
        (copy / name).write_text(json.dumps(d))
    tokenizer, from_eos = load_tokenizer(str(copy))
    assert from_eos and tokenizer.pad_token == tokenizer.eos_token
    assert "no pad token" in caplog.text


def test_student_without_pad_or_eos_token_is_refused(monkeypatch):
    import transformers

    from scotd_harness.train import load_tokenizer

    class Bare:
        pad_token = eos_token = None

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: Bare())
    with pytest.raises(ScotdError, match="neither a pad nor an EOS"):
        load_tokenizer("bare-model")


def test_cli_reports_bad_input_cleanly(tmp_path):
    from click.testing import CliRunner

    from scotd_harness.cli import cli

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = CliRunner().invoke(cli, ["train", "--corpus", str(empty), "--out", str(tmp_path / "s")])
    assert result.exit_code == 1 and "holds no rows" in result.output
    help_text = CliRunner().invoke(cli, ["train", "--help"]).output
    for flag in ("--label-only", "--chains [balanced|all]", "--batching", "--lora", "--resume", "--dev-fraction",
                 "--grad-accum", "--precision"):
        assert flag in help_text


# --- training runs -----------------------------------------------------------------------------------------------


def _load(out: Path):
    from transformers import AutoModelForCausalLM

    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    return AutoModelForCausalLM.from_pretrained(out), json.loads((out / "scotd.json").read_text())


@pytest.mark.slow
def test_embedded_student_trains_and_saves(tmp_path, corpus, embedded_model_dir):
    """Three steps on the real 135M student: parameters move, the loss on a repeated batch falls."""
    import torch
    from transformers import AutoModelForCausalLM

    from scotd_harness.train import train

    rows = [r for r in fixture_rows(corpus) if r["sample_index"] == 0][:4]  # 4 chains: one batch, seen 3 times
    small = write_rows(tmp_path / CORPUS_NAME, rows)
    cfg = config(tmp_path, "embedded", small, max_steps=3, learning_rate=1e-4, max_length=128,
                 per_device_train_batch_size=4, chains="all", batching="padded")
    out = train(cfg)
    model, info = _load(out)
    assert info["kind"] == "scotd" and info["format_version"] == formats.FORMAT_VERSION
    assert info["base_model"] == "embedded" and info["tasks"] == ["csqa"]
    assert info["corpus"]["path"] == CORPUS_NAME and info["result"]["global_step"] == 3
    assert info["corpus"]["examples"] == 4 and info["corpus"]["dropped"] == {}
    base = AutoModelForCausalLM.from_pretrained(embedded_model_dir)
    changed = [n for (n, p), (_, q) in zip(model.named_parameters(), base.named_parameters()) if not torch.equal(p, q)]
    assert len(changed) > 10
    history = json.loads(next(out.glob("checkpoint-*/trainer_state.json")).read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 3 and losses[-1] < losses[0]  # the whole corpus is one batch: the same batch each step


def test_label_only_tiny(tmp_path, corpus, tiny_llama):
    from scotd_harness.train import train

    out = train(config(tmp_path, tiny_llama, corpus, label_only=True, max_steps=3))
    _, info = _load(out)
    assert info["kind"] == "label-only" and info["formats"]["target"] == "formats.direct_target"
    assert info["corpus"]["examples"] == 6 and info["result"]["global_step"] == 3
    assert info["result"]["epochs"] == 1.0  # 3 steps of 2 examples over 6: one pass, recorded for the report


def test_lora_is_merged_and_dev_set_keeps_the_best(tmp_path, corpus, tiny_llama):
    from scotd_harness.train import train

    cfg = config(tmp_path, tiny_llama, corpus, lora=True, lora_r=4, max_steps=4, learning_rate=1e-3,
                 dev_fraction=0.3, eval_steps=2, batching="length")
    assert cfg.load_best_model_at_end and cfg.save_steps == 2
    out = train(cfg)
    _, info = _load(out)
    assert not (out / "adapter_config.json").exists()  # merged: a plain model directory
    assert info["corpus"]["dev_questions"] >= 1
    assert info["result"]["best_checkpoint"] in ("checkpoint-2", "checkpoint-4")
    assert info["result"]["best_dev_loss"] is not None
    # the dev-loss curve is kept (two evaluations: steps 2 and 4), its best is the best recorded
    losses = info["result"]["eval_losses"]
    assert len(losses) == 2 and min(losses) == pytest.approx(info["result"]["best_dev_loss"])


def test_the_last_step_is_evaluated_when_it_is_not_a_multiple_of_eval_steps(tmp_path, corpus, tiny_llama):
    """3 steps, evaluated every 2: the Trainer alone scores step 2 only, and a best-dev-loss student could never be
    the final one; step 3 is scored (and saved) too."""
    from scotd_harness.train import train

    out = train(config(tmp_path, tiny_llama, corpus, max_steps=3, learning_rate=1e-3, dev_fraction=0.3, eval_steps=2))
    _, info = _load(out)
    history = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "eval_loss" in h] == [2, 3]
    assert len(info["result"]["eval_losses"]) == 2
    assert info["result"]["best_checkpoint"] in ("checkpoint-2", "checkpoint-3")


def test_accelerate_launch_two_processes(tmp_path, corpus, tiny_llama):
    """Two CPU processes split each epoch's 6 questions (3 steps of 1 per process) and write one student.

    accelerate 1.15's `launch --cpu --num_processes 2` starts a single process (its CPU multi-process path is
    mpirun with --mpirun_hostfile); `--multi_gpu` is its torchrun launcher, which on a machine without GPUs
    starts CPU processes that DistillConfig joins over gloo."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "scotd_harness.train",
           "--student", str(tiny_llama), "--corpus", str(corpus), "--out", str(out), "--epochs", "1",
           "--batch-size", "1", "--max-length", "160", "--save-steps", "100", "--seed", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    model, info = _load(out)
    assert info["training"]["world_size"] == 2
    assert info["result"]["global_step"] == 3  # 6 questions / (2 processes x batch 1)


KILL_AFTER_SAVE = """
import os, signal, sys
from transformers import TrainerCallback
from scotd_harness.train import DistillConfig, train

class Kill(TrainerCallback):
    def on_save(self, args, state, control, **kw):
        if state.global_step == 2:
            os.kill(os.getpid(), signal.SIGKILL)

cfg = DistillConfig(student=sys.argv[1], corpus=sys.argv[2], output_dir=sys.argv[3], max_steps=4, save_steps=2,
                    per_device_train_batch_size=2, max_length=160, use_cpu=True, disable_tqdm=True,
                    resume_from_checkpoint="last", save_total_limit=None, logging_steps=1)
train(cfg, callbacks=[Kill()] if sys.argv[4] == "kill" else [])
"""


def test_resume_after_kill(tmp_path, corpus, tiny_llama):
    out = tmp_path / "resumed"
    script = tmp_path / "run.py"
    script.write_text(KILL_AFTER_SAVE)
    args = [sys.executable, str(script), str(tiny_llama), str(corpus), str(out)]
    killed = subprocess.run(args + ["kill"], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (out / "checkpoint-2").is_dir() and not (out / "scotd.json").exists()
    resumed = subprocess.run(args + ["go"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, info = _load(out)
    assert info["result"]["resumed_from"] == "checkpoint-2" and info["result"]["global_step"] == 4
    # the recorded loss is the mean over all 4 steps, not the 2 resumed ones divided by 4 (Trainer's own figure)
    logged = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    losses = {h["step"]: h["loss"] for h in logged if "loss" in h}
    assert sorted(losses) == [1, 2, 3, 4]
    assert info["result"]["train_loss"] == pytest.approx(sum(losses.values()) / 4, rel=1e-3)


# --- precision ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, native", [
    ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n", True),
    ("processor\t: 0\nflags\t\t: fpu sse4_2 avx2 fma amx_bf16 amx_tile\n", True),
    ("processor\t: 0\nflags\t\t: fpu sse4_2 avx2 avx512f avx512bw\n", False),  # AVX-512 without BF16: emulated
    ("processor\t: 0\nFeatures\t: fp asimd sve i8mm bf16\n", True),  # Arm (Graviton 3, Neoverse V1)
    ("processor\t: 0\nFeatures\t: fp asimd evtstrm crc32\n", False),
])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, text, native):
    from scotd_harness.train import cpu_has_native_bf16

    (tmp_path / "cpuinfo").write_text(text)
    assert cpu_has_native_bf16(tmp_path / "cpuinfo") is native
    assert cpu_has_native_bf16(tmp_path / "missing") is False


def test_fp16_on_a_cpu_is_refused(tmp_path, corpus, tiny_llama):
    with pytest.raises(ScotdError, match="fp16 needs a CUDA GPU"):
        config(tmp_path, tiny_llama, corpus, precision="fp16")


def test_cpu_bf16_autocast_trains_and_saves_fp32(tmp_path, corpus, tiny_llama):
    """bf16 on a CPU is autocast: the matmuls run in bf16, the weights, optimizer and saved student stay fp32."""
    import torch
    from safetensors import safe_open

    from scotd_harness.train import train

    cfg = config(tmp_path, tiny_llama, corpus, precision="bf16", max_steps=3, learning_rate=1e-3)
    assert cfg.bf16 and not cfg.fp16 and cfg.precision == "bf16"
    out = train(cfg)
    model, info = _load(out)
    assert info["training"]["precision"] == "bf16"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    history = json.loads(next(out.glob("checkpoint-*/trainer_state.json")).read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 3 and all(0 < x < 20 for x in losses)


# --- the command line and the import graph -------------------------------------------------------------------------


def test_library_does_not_import_the_cli_layer():
    """No library module imports scotd_harness.cli or scotd_harness.commands, at any level (function bodies and
    `if __name__ == "__main__"` blocks included): `scotd train` wraps `scotd_harness.train`, never the reverse."""
    import ast

    import scotd_harness
    import scotd_harness.export

    roots = [Path(scotd_harness.__file__).parent, Path(scotd_harness.export.__file__).parent]
    offenders = []
    for path in (p for root in roots for p in root.rglob("*.py")):
        if "commands" in path.parts or path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module or ''}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names
                          if "commands" in n.split(".") or n.split(".")[-1] == "cli"]
    assert len(roots[0].joinpath("train.py").read_text()) > 0 and not offenders, offenders


def test_module_entry_point_is_the_scotd_train_command():
    """`python -m scotd_harness.train` (what accelerate launch and torchrun run) and `scotd train` are one command:
    the same options, every one of OPTIONS, with its help; bad input is a one-line error from both."""
    from click.testing import CliRunner

    from scotd_harness.cli import cli
    from scotd_harness.train import OPTIONS

    module = subprocess.run([sys.executable, "-m", "scotd_harness.train", "--help"], capture_output=True, text=True,
                            timeout=300, check=False)
    assert module.returncode == 0, module.stderr[-2000:]
    scotd = CliRunner().invoke(cli, ["train", "--help"])
    assert scotd.exit_code == 0, scotd.output
    flags = [flag or "--" + name.replace("_", "-") for name, flag in OPTIONS]
    assert all(flag in module.stdout and flag in scotd.output for flag in flags)
    def listed(text):
        return set(re.findall(r"(?m)^\s+(--[a-z0-9-]+)", text.split("Options:")[1])) - {"--help"}

    assert listed(module.stdout) == listed(scotd.output) >= set(flags)
    missing = subprocess.run([sys.executable, "-m", "scotd_harness.train", "--corpus", "nowhere.jsonl", "--out", "x"],
                             capture_output=True, text=True, timeout=300, check=False)
    assert missing.returncode == 1 and "Error: corpus nowhere.jsonl does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
