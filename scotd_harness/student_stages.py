"""The pipeline stages that make and score students: tune, train, evaluate, export.

Which students a run has (arms x sizes) is scotd_harness.arms; the run directory and the stage runner are
scotd_harness.pipeline. Each stage here resumes inside itself: a trained student (weights and scotd.json) is kept,
a training resumes from its newest checkpoint, a tuning candidate recorded in tune/scores.json is not redone, and a
model whose results are in place (same tasks, split, limit) is not scored again. The same records, restored into a
new run directory (run_records), let a study go on where its weights are gone: a student whose every evaluation is
recorded is trained again only when the export or self-consistency needs it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import typing
from pathlib import Path

from . import atomic

if typing.TYPE_CHECKING:
    from .pipeline import PipelineConfig, Run


def _train_one(run: Run, out: Path, student, learning_rate: float | None, say, epochs: float | None = None) -> Path:
    """Train one student into `out`, resuming from its newest Trainer checkpoint when a killed run left one.

    A student whose weights and scotd.json exist finished training (scotd.json is written last) and is kept; a
    scotd.json alone is a restored record of a training whose weights are elsewhere, so it trains again. Once a student is saved
    its checkpoints (optimizer state included: about 12 bytes a parameter) are deleted: they only serve resumption.
    A stale checkpoint cannot leak in: the run directory is tied to one config and `--from` at or before `train`
    removes the students first."""
    from transformers.trainer_utils import get_last_checkpoint

    from .arms import corpus_path
    from .train import SCOTD_JSON, DistillConfig, train

    if is_trained(out):
        say(f"  {out.relative_to(run.root)}: trained already (its weights and {SCOTD_JSON} exist), kept")
        return out
    # a restored record goes before training starts: scotd.json must mean a finished student, also after a kill
    (out / SCOTD_JSON).unlink(missing_ok=True)
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    if last:
        say(f"  {student.name}: resuming from {Path(last).name} (a Trainer checkpoint of the interrupted run)")
    options = train_options(run.cfg, student)
    if learning_rate is not None:
        options["learning_rate"] = learning_rate
    if epochs is not None:
        options["num_train_epochs"] = epochs
    cfg = DistillConfig(student=run.cfg.student, corpus=str(corpus_path(run.root, student.corpus)),
                        task=run.cfg.task, label_only=student.label_only, output_dir=str(out),
                        resume_from_checkpoint="last", **options)
    train(cfg, callbacks=[_no_final_checkpoint()])
    for checkpoint in out.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    run.pack_records()
    return out


def is_trained(student_dir: Path) -> bool:
    from .train import SCOTD_JSON

    return (student_dir / SCOTD_JSON).is_file() and any(student_dir.glob("*.safetensors"))


def _no_final_checkpoint():
    """A TrainerCallback that skips the checkpoint the Trainer writes after the last step: the student is saved
    right then, so that checkpoint (about 12 bytes a parameter) would only be written to be deleted. Kept when the
    best checkpoint is loaded at the end, which needs it."""
    from transformers import TrainerCallback

    class NoFinalCheckpoint(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps and not args.load_best_model_at_end:
                control.should_save = False

    return NoFinalCheckpoint()


def train_options(cfg: PipelineConfig, student) -> dict:
    """The `scotd train` options of one student: the run's, then its size's."""
    return {"seed": cfg.seed, **cfg.train, **student.train}


def epochs_of(cfg: PipelineConfig, student) -> float | None:
    """The epochs a student's options give it; None when it trains for a number of steps."""
    from .train import DistillConfig

    options = train_options(cfg, student)
    if options.get("max_steps", -1) > 0:
        return None
    return options.get("num_train_epochs", DistillConfig.__dataclass_fields__["num_train_epochs"].default)


def tuned_epochs(cfg: PipelineConfig, student, chosen_epochs: float | None) -> float | None:
    """The epochs `student` trains for when its arm's tuned candidate trained for `chosen_epochs`: its own epochs
    times chosen / tuning-size epochs (2k at 6 of 2 epochs: the full size at 1 trains for 3); None where that is
    just its own (no epochs tuned, the base won, or training in steps)."""
    from .arms import students

    tuning = next(s for s in students(cfg) if s.arm == student.arm and s.questions == _tune_size(cfg))
    base, own = epochs_of(cfg, tuning), epochs_of(cfg, student)
    if chosen_epochs is None or base is None or own is None or chosen_epochs == base:
        return None
    return own * chosen_epochs / base


def _candidate(learning_rate: float, epochs: float | None = None) -> str:
    """A tuning candidate's name (its folder under tune/<student>/): `lr0.0001`, or `lr0.0001-ep6` when it
    trains for other than the tuning size's epochs."""
    return f"lr{learning_rate:g}" + (f"-ep{epochs:g}" if epochs is not None else "")


def _tune_size(cfg: PipelineConfig) -> int | None:
    return cfg.tune.questions if cfg.tune.questions is not None else cfg.train_sizes[0].questions


def stage_tune(run: Run, say) -> dict:
    """Each arm at the tuning size, once per learning rate of the grid, then (an arm in `tune.epochs`) once per
    number of epochs at its best rate, scored on held-out train questions; each arm's best candidate is recorded
    (tune/scores.json, and this stage's summary). Candidates finish one by one and are recorded as they do, so a
    killed stage resumes at the next candidate (a candidate's training resumes from its checkpoint). The losing
    candidates' weights are deleted at the end; their scores stay."""
    from .arms import students
    from .datasets import choices_of

    cfg = run.cfg
    tune = cfg.tune
    size = _tune_size(cfg)
    scores_path = run.tune_dir / "scores.json"
    scores = json.loads(scores_path.read_text(encoding="utf-8")) if scores_path.is_file() else {}

    def candidate(student, rate: float, epochs: float | None = None) -> dict:
        key = f"{student.name} lr{rate:g}" + (f" ep{epochs:g}" if epochs is not None else "")
        if key not in scores:
            out = run.tune_dir / student.name / _candidate(rate, epochs)
            say(f"  tune {student.name} at learning rate {rate:g}" + (f", {epochs:g} epochs" if epochs else ""))
            started = time.monotonic()
            _train_one(run, out, student, rate, say, epochs=epochs)
            result = _score(run, student.name, str(out), [student.task(cfg.task)],
                            run.tune_dir / "eval" / key.replace(" ", "_"), split=tune.split, limit=tune.limit, say=say)
            scores[key] = {"arm": student.arm, "learning_rate": rate, "accuracy": result["accuracy"], "n": result["n"],
                           "most_common_share": result["most_common_share"], "dev_losses": _dev_losses(out),
                           # training and scoring in this sitting (a candidate resumed from a checkpoint: its rest)
                           "seconds": round(time.monotonic() - started, 1)}
        if "epochs" not in scores[key]:  # (also a candidate scored before candidates recorded their epochs)
            scores[key]["epochs"] = epochs if epochs is not None else epochs_of(cfg, student)
        atomic.write_json(scores_path, scores)
        run.pack_records()
        return {**scores[key], "folder": _candidate(rate, epochs)}

    chosen, chosen_epochs = {}, {}
    for student in (s for s in students(cfg) if s.questions == size):
        base = epochs_of(cfg, student)
        tried = [candidate(student, rate) for rate in tune.learning_rate]
        best_rate = choose_candidate(tried, choices_of(cfg.task))["learning_rate"]
        tried += [candidate(student, best_rate, epochs) for epochs in tune.epochs.get(student.arm, []) if epochs != base]
        best = choose_candidate(tried, choices_of(cfg.task))
        chosen[student.arm], chosen_epochs[student.arm] = best["learning_rate"], best["epochs"]
        say(f"  {student.arm}: learning rate {best['learning_rate']:g}"
            + (f", {best['epochs']:g} epochs" if best["epochs"] is not None else "")
            + f" (accuracy {best['accuracy']:.3f} on {best['n']} {tune.split} questions)")
        for other in tried:
            if other["folder"] != best["folder"]:
                _drop_weights(run.tune_dir / student.name / other["folder"])
    return {"grid": list(tune.learning_rate), "epochs_grid": dict(tune.epochs), "questions": size,
            "split": tune.split, "limit": tune.limit, "chosen": chosen, "chosen_epochs": chosen_epochs,
            "scores": scores}


def choose_candidate(candidates: list[dict], choices: int | None = None) -> dict:
    """The candidate with the best held-out accuracy, the smaller rate and then the fewer epochs on a tie; a
    failed one (stats.check_run's rules: one answer to more than half of the questions, three quarters where
    there are `choices` = 2, or a diverged dev loss)
    only when every candidate failed, since a collapsed student's accuracy is the share of its letter among the
    gold answers, not learning, and the report would flag the chosen one as failed."""
    from .stats import collapse_share, diverged

    def key(c: dict):
        collapsed = c["most_common_share"] is not None and c["most_common_share"] > collapse_share(choices)
        failed = collapsed or diverged(c.get("dev_losses")) is not None
        return (not failed, c["accuracy"], -c["learning_rate"], -(c.get("epochs") or 0))

    return max(candidates, key=key)


def _drop_weights(student_dir: Path) -> None:
    """A losing tuning candidate: its weights and exports go, its scotd.json (losses, settings) stays."""
    if not student_dir.is_dir():
        return
    for path in student_dir.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        elif path.suffix in (".safetensors", ".bin", ".onnx", ".data"):
            path.unlink()


def _dev_losses(student_dir: Path) -> list | None:
    from .train import SCOTD_JSON

    meta = student_dir / SCOTD_JSON
    return json.loads(meta.read_text(encoding="utf-8")).get("result", {}).get("eval_losses") if meta.is_file() else None


def stage_train(run: Run, say) -> dict:
    """Every student of the run that is still to be scored (`make_student`). A student whose every evaluation is
    recorded already (restored records of a run whose weights are gone) is not trained here: the export stage
    trains the best one again if it has to. With `run.score_as_trained` each student is scored (its greedy jobs of
    the evaluate stage) as soon as it is trained, so a sitting that ends inside this stage keeps, in the records,
    every student it finished."""
    from .arms import students

    summary = {}
    jobs = evaluation_jobs(run)
    pending = {name for _, name, out, tasks, split, limit in jobs if not _recorded(out, tasks, split, limit)}
    for student in students(run.cfg):
        out = run.students / student.name
        if student.name not in pending and not is_trained(out):
            say(f"  {student.name}: every evaluation recorded already; not trained (weights only if a later stage needs them)")
            summary[student.name] = None
            continue
        summary[student.name] = str(make_student(run, student.name, say).relative_to(run.root))
        if run.score_as_trained:
            for job in (j for j in jobs if j[1] == student.name):
                _score_job(run, job, say)
    return summary


def make_student(run: Run, name: str, say) -> Path:
    """Student `name` in students/, trained unless it is there: at the tuning size it is the tuned candidate
    itself, moved into place; the other sizes train at the arm's chosen rate, for their own epochs times chosen /
    tuning-size epochs."""
    from .arms import students

    cfg = run.cfg
    student = next(s for s in students(cfg) if s.name == name)
    tuned_state = run.state().get("tune", {}) if cfg.tune else {}
    chosen, chosen_epochs = tuned_state.get("chosen", {}), tuned_state.get("chosen_epochs", {})
    out = run.students / student.name
    rate = chosen.get(student.arm)
    epochs = tuned_epochs(cfg, student, chosen_epochs.get(student.arm)) if rate is not None else None
    tuned = None
    if rate is not None and student.questions == _tune_size(cfg):
        tuned = run.tune_dir / student.name / _candidate(rate, epochs)
    # (after `--from train` the tuned one is gone: moved into the students/ that was removed; then it retrains)
    if tuned is not None and is_trained(tuned) and not is_trained(out):
        if out.exists():  # a restored record of this student's training, superseded by the student itself
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tuned, out)
        say(f"  {student.name}: the tuned student (learning rate {rate:g}"
            + (f", {epochs:g} epochs)" if epochs else ")"))
    else:
        _train_one(run, out, student, rate, say, epochs=epochs)
    say(f"  {student.name}: {out}")
    return out


#: teacher backend -> the lm-eval model type that evaluates it (an `openai:` endpoint is not evaluated)
TEACHER_MODEL_TYPES = {"hf": "hf", "onnx": "scotd-onnx"}


def evaluated_models(run: Run) -> dict[str, tuple[str, dict[str | None, list[str]], str]]:
    """name -> (model, {split: lm-eval tasks}, lm-eval model type): what the evaluate stage scores, in the
    report's order. Students are scored with `eval_backend` (see `_score`) on the run's task and the transfer tasks
    (split None: eval_split)."""
    from .arms import Student, students

    cfg = run.cfg
    models = {}
    backend, _, teacher = cfg.teacher.partition(":")
    if cfg.evaluate_teacher and cfg.corpus_source == "sample" and backend in TEACHER_MODEL_TYPES:
        models["teacher"] = (teacher, {None: [f"scotd_{cfg.task}_fewshot"]}, TEACHER_MODEL_TYPES[backend])

    def tasks_of(student: Student) -> dict[str | None, list[str]]:
        by_split: dict[str | None, list[str]] = {None: [student.task(cfg.task)]}
        for item in cfg.transfer_tasks:
            task, _, split = item.partition(":")
            by_split.setdefault(split or None, []).append(student.task(task))
        return by_split

    if cfg.evaluate_undistilled:
        models["undistilled"] = (cfg.student, tasks_of(Student("undistilled", None)), cfg.eval_backend)
    for student in students(cfg):
        models[student.name] = (str(run.students / student.name), tasks_of(student), cfg.eval_backend)
    return models


def _eval_model(run: Run, name: str, model: str, say) -> tuple[str, str]:
    """(model, lm-eval model type) for a student under `eval_backend`: `onnx` exports it to fp32 first (kept in
    `<student>/onnx-fp32`, or onnx-eval/<name> for a hub model; the export checks parity with PyTorch)."""
    if run.cfg.eval_backend == "hf":
        return model, "hf"
    from .export.exporter import export

    path = Path(model)
    # a student of this run keeps its export beside its weights (it moves with a tuned student); a model from
    # elsewhere (the base student) is never written into: its export goes under the run
    ours = path.is_dir() and run.root.resolve() in path.resolve().parents
    target = path / "onnx-fp32" if ours else run.root / "onnx-eval" / name
    if not (target / "scotd.json").is_file():  # an export is atomic: scotd.json means it passed its checks
        say(f"  {name}: exporting to fp32 ONNX for scotd-onnx ({target.relative_to(run.root)})")
        export(model, target, dtype="fp32", overwrite=True, accuracy_sample=0, data_dir=run.cfg.data_dir)
    return str(target), "scotd-onnx"


def _recorded(out: Path, tasks: list[str], split: str | None = None, limit: int | None = None,
              sc_samples: int | None = None) -> bool:
    """Whether `out` holds the results of scoring these tasks on this split and limit."""
    results_file = out / "results.json"
    previous = json.loads(results_file.read_text(encoding="utf-8")).get("scotd", {}) if results_file.is_file() else {}
    wanted = {"tasks": tasks, "limit": limit, "split": split or "validation", "sc_samples": sc_samples}
    return all(previous.get(k) == v for k, v in wanted.items())


def _score(run: Run, name: str, model: str, tasks: list[str], out: Path, split: str | None = None,
           limit: int | None = None, sc_samples: int | None = None, model_type: str | None = None, say=print) -> dict:
    """Evaluate one model on `tasks` into `out` (skipped when `out` holds results of the same tasks, limit and
    split: a killed evaluate stage resumes at the next model); returns the first task's accuracy and answer share."""
    from .eval_samples import read_outcomes
    from .evaluate import evaluate
    from .stats import check_run

    results_file = out / "results.json"
    if not _recorded(out, tasks, split, limit, sc_samples):
        if model_type is None:
            model, model_type = _eval_model(run, name, model, say)
        output = evaluate(model, tasks, model_type=model_type, limit=limit, batch_size=run.cfg.eval_batch_size,
                          output_dir=out, split=split, data_dir=run.cfg.data_dir, seed=run.cfg.seed, log_samples=True,
                          max_gen_toks=run.cfg.eval_max_new_tokens, sc_samples=sc_samples)
        say(f"  {name}:\n" + "\n".join("    " + line for line in output.table.splitlines()))
        run.pack_records()
    else:
        say(f"  {name}: evaluated already ({out.relative_to(run.root)})")
    results = json.loads(results_file.read_text(encoding="utf-8"))
    metrics = results["results"][tasks[0]]
    key = next(k for k in metrics if k.startswith("acc,"))
    outcomes = read_outcomes(out).get((tasks[0], key.partition(",")[2]), {})
    check = check_run([o.prediction for o in outcomes.values()], None)
    return {"accuracy": metrics[key], "n": len(outcomes) or None,
            "most_common_share": check.most_common_share if outcomes else None,
            "results": str(results_file.relative_to(run.root))}


def best_student(run: Run) -> str:
    """The SCoTD student (the `scotd` arm; the `cose` one where a run has no scotd arm) with the best greedy
    accuracy on the run's task, or the first of them when none is scored yet. This one is exported, and scored by
    self-consistency."""
    from .arms import students

    arm = "scotd" if "scotd" in run.cfg.arm_names else "cose"
    candidates = [s for s in students(run.cfg) if s.arm == arm]
    best, best_acc = candidates[0].name, -1.0
    for student in candidates:
        results = run.eval_dir / student.name / "results.json"
        if not results.is_file():
            continue
        metrics = json.loads(results.read_text(encoding="utf-8"))["results"].get(student.task(run.cfg.task), {})
        acc = next((v for k, v in metrics.items() if k.startswith("acc,")), None)
        if acc is not None and acc > best_acc:
            best, best_acc = student.name, acc
    return best


def evaluation_jobs(run: Run) -> list[tuple]:
    """(key, name, out, tasks, split, limit): each greedy scoring of the evaluate stage, in order. A model's
    scores on the run's own split go in eval/<name>/, another split of a transfer task in a folder of its own."""
    cfg = run.cfg
    jobs = []
    for name, (_, by_split, _) in evaluated_models(run).items():
        for split, tasks in by_split.items():
            out = run.eval_dir / name / (f"{split}-split" if split else "")
            jobs.append((name + (f" {split}" if split else ""), name, out, tasks, split or cfg.eval_split,
                         cfg.eval_limit))
    return jobs


def _score_job(run: Run, job: tuple, say, models: dict | None = None) -> dict:
    _, name, out, tasks, split, limit = job
    model, _, model_type = (models or evaluated_models(run))[name]
    result = _score(run, name, model, tasks, out, split=split, limit=limit,
                    model_type=model_type if name == "teacher" else None, say=say)
    return {**result, "tasks": tasks}


def stage_evaluate(run: Run, say) -> dict:
    from .arms import students

    cfg = run.cfg
    summary = {}
    models = evaluated_models(run)
    ours = {s.name for s in students(cfg)}
    for job in evaluation_jobs(run):
        key, name, out, tasks, split, limit = job
        if name in ours and not _recorded(out, tasks, split, limit):
            make_student(run, name, say)  # (trained by the train stage, unless its scores were restored)
        summary[key] = _score_job(run, job, say, models)
    if cfg.self_consistency:
        best = best_student(run)
        task = f"scotd_{cfg.task}_sc"
        out = run.eval_dir / best / "sc"
        if not _recorded(out, [task], cfg.eval_split, cfg.eval_limit, cfg.sc_samples):
            make_student(run, best, say)
        summary[f"{best} sc"] = _score(run, best, str(run.students / best), [task], out,
                                       split=cfg.eval_split, limit=cfg.eval_limit, sc_samples=cfg.sc_samples, say=say)
        summary[f"{best} sc"]["tasks"] = [task]
    return summary


def stage_export(run: Run, say) -> dict:
    """The best distilled student: fp32 export (kept in onnx-fp32/ when quantising, or the one the evaluate stage
    made, so the slow graph export runs once per student), then the quantised one derived from it; each is swapped
    in only after its checks pass."""
    from .export.exporter import export

    cfg = run.cfg
    best = best_student(run)
    student = make_student(run, best, say)  # (restored records without its weights: it trains again)
    fp32_dir = run.onnx_fp32
    if cfg.eval_backend == "onnx" and (student / "onnx-fp32" / "scotd.json").is_file():
        fp32_dir = student / "onnx-fp32"
    export(student, run.onnx, quantization=cfg.export_quantize,
           fp32_dir=fp32_dir if cfg.export_quantize else None, accuracy_sample=cfg.export_accuracy_sample,
           accuracy_task=cfg.task, accuracy_split=cfg.eval_split, data_dir=cfg.data_dir, overwrite=True,
           progress=lambda msg: say("  " + msg))
    summary = {"student": best, "onnx": str(run.onnx.relative_to(run.root)), "quantize": cfg.export_quantize}
    if cfg.export_quantize:
        summary["onnx_fp32"] = str(fp32_dir.relative_to(run.root))
    return summary
