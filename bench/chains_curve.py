"""Chains per question, measured: SCoTD's central claim with a local teacher, as one resumable script.

The teacher is the project's best distilled CSQA student (PaLM-540B chains), exported: by default the int4 export
of a `scotd pipeline --preset csqa-palm` run (`--teacher-run`), whose training corpus names the questions it has
seen. Stages, each a folder under --run-dir (a rerun of the same command resumes every one of them where it
stopped; the sample and the arms are pipeline run directories, which record their finished stages in stages.json):

1. ``sample``: N=16 chains at T=1.0 (the paper's temperature) for --questions CSQA train questions the teacher
   never trained on (pipeline `exclude_questions`), through the torch-free `onnx:` teacher.
2. ``teacher-eval``: the teacher's own greedy accuracy on CSQA dev, asked as it was asked to sample (the
   few-shot CoT prompt, scotd_csqa_fewshot) through scotd-onnx: the line a student above its teacher would cross.
3. ``arms``: fresh students from the same base, on those questions' chains, every one with the same optimizer
   steps and learning rate: n in {1, 4, 16} (the first n chains of each question) x {correct (supervised), all
   (few-shot)}; then at n=16 four selections of the correct chains, each keeping 4 per question's worth:
   random-k, likelihood-k (teacher log-probs), diversity-k (MiniLM k-means), each 4 distinct chains, and
   open-ended (the half of the questions whose 16 chains differ most, ranked before the answer filter so every
   question is ranked on as many chains; then 8 correct chains each). Each is scored greedily on CSQA dev through
   scotd-onnx.
4. ``report``: `scotd report --sweep` over the arm runs (accuracy against n, a line per filter, the selection
   table, each compared on the same questions) into --results as TAG.{md,json} and TAG.png (the curve), with the
   teacher's accuracy on dev and on the sampled questions, each arm's corpus statistics and the wall time of every
   stage over all sittings (kept in the records folder as wall_time.json). Rewritten after the teacher is scored
   and after every arm, so a partial run has its figures.

Each stage's records (run_records: the sampled chains without their questions' text, every arm's training record
and scores, never weights) are kept in --records (RESULTS/TAG_records/) as STAGE.tar.gz, rewritten as the stage
goes (every 10 minutes while sampling). Where --run-dir is gone (another machine, a lost scratch disk), the same command restores each
stage from its archive: a restored sample is not sampled again, a scored arm is not trained again. The run
configs name the teacher and the sampled corpus relative to --run-dir (the script works inside it), so the
archives name no folder of the machine that made them. The teacher run must keep its place beside --run-dir,
but only its records are needed once the teacher is scored (`scotd pipeline --restore` its records.tar.gz, up to
the filter stage): the arms train on the recorded chains, and the teacher is not trained or exported again.

Usage::

    SCOTD_DATA_DIR=DATA python bench/chains_curve.py --teacher-run runs/csqa-palm --run-dir runs/chains-curve
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
log = logging.getLogger("chains_curve")

CURVE_N = (1, 4, 16)
CURVE_FILTERS = ("correct", "all")
#: the selection arms at n=16: each keeps about 4 correct chains per question of the corpus. open-ended ranks the
#: questions on all 16 chains: after `correct` they hold 1 to 16 and the one-chain ones could not be ranked
SELECTIONS = {
    "random-k": ["correct", "random-k:k=4"],
    "likelihood-k": ["correct", "likelihood-k:k=4"],
    "diversity-k": ["correct", "diversity-k:k=4"],
    "open-ended": ["open-ended:fraction=0.5", "correct", "random-k:k=8"],
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run-dir", default="runs/chains-curve", help="Folder of the sample and arm run directories.")
    p.add_argument("--records", help="Folder of each stage's records archive, kept as the stage goes and restored\n"
                                     "from where its run directory is gone (default: RESULTS/TAG_records).")
    p.add_argument("--teacher-run", help="A csqa-palm pipeline run: its onnx/ export is the teacher, the corpus of\n"
                                         "its exported student the questions to leave out.")
    p.add_argument("--teacher-student", help="With --teacher-run: this student of the run instead of the one its\n"
                                             "export stage chose (e.g. scotd_2k before the full-size ones exist);\n"
                                             "exported to int4 under --run-dir/teacher.")
    p.add_argument("--teacher", help="Instead of --teacher-run: an export directory (scotd export) ...")
    p.add_argument("--exclude", help="... and the corpus it trained on (its questions are not sampled).")
    p.add_argument("--questions", type=int, default=1000, help="CSQA train questions to sample (default 1000).")
    p.add_argument("--n", type=int, default=16, help="Chains sampled per question (default 16).")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--student", default="embedded", help="Base of every student (default: the embedded model).")
    p.add_argument("--max-steps", type=int, default=500, help="Optimizer steps of every student (default 500).")
    p.add_argument("--lr", type=float, default=1e-4, help="Learning rate of every student (default 1e-4).")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dev-fraction", type=float, default=0.05,
                   help="Corpus questions held out for the dev loss, every 100 steps (0: none).")
    p.add_argument("--eval-limit", type=int, default=None, help="First N CSQA dev questions (default: all 1221).")
    p.add_argument("--arms", default=None, help="Comma-separated arm names to run (default: all), e.g. n1-correct.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=str(RESULTS), help="Folder of the result files (default: bench/results).")
    p.add_argument("--tag", default="chains_curve", help="Name of the result files in --results.")
    p.add_argument("--report-only", action="store_true",
                   help="Rewrite the result files from the stages finished so far and run nothing (safe beside a\n"
                        "sitting under way: it adds no wall time).")
    return p.parse_args(argv)


def teacher_of(args, export_missing: bool = True) -> tuple[Path, Path | None]:
    """(export directory, corpus of the questions it trained on); the int4 export of --teacher-student is made
    here the first time, unless `export_missing` is false or the stages that use it are over (teacher_done)."""
    if args.teacher_run:
        run = Path(args.teacher_run)
        student = teacher_student(args)
        out = Path(args.run_dir) / "teacher"
        # its weights are needed to sample and to be scored, not by the arms: once those are recorded it may be gone
        needed = args.teacher_student and not (out / "scotd.json").is_file() and not teacher_done(args)
        if needed and export_missing:
            trained_student(run, student)
        meta = json.loads((run / "students" / student / "scotd.json").read_text())
        corpus = Path(meta["training"]["corpus"])
        if not corpus.exists():  # (restored records name it relative to the run, `./corpora/...`)
            corpus = run / corpus
        if not args.teacher_student:
            return run / "onnx", corpus
        if needed and not export_missing:
            raise SystemExit(f"the teacher is not exported yet ({out}): run the study first")
        if needed:  # an export is atomic: scotd.json means it passed its checks
            from scotd_harness.export.exporter import export

            fp32 = run / "students" / student / "onnx-fp32"
            export(run / "students" / student, out, quantization="int4", fp32_dir=fp32 if fp32.is_dir() else None,
                   accuracy_sample=0, overwrite=True, progress=lambda msg: log.info("teacher export: %s", msg))
        elif not (out / "scotd.json").is_file():
            log.info("the teacher is scored already: going on without its export (%s is not there)", out)
        return out, corpus
    if not args.teacher:
        raise SystemExit("give --teacher-run RUN, or --teacher EXPORT_DIR (with --exclude CORPUS)")
    return Path(args.teacher), Path(args.exclude) if args.exclude else None


def teacher_done(args) -> bool:
    """Whether the stages that use the teacher are over: it is scored (teacher-eval) only after the sample is
    complete, so its recorded scores (in --run-dir, or archived in --records) mean the arms need only the chains.
    A study whose scratch disk is lost then goes on from its records without training and exporting its teacher
    again (which would give another teacher, with other weights)."""
    return ((Path(args.run_dir) / "teacher-eval" / "eval" / "teacher" / "results.json").is_file()
            or (Path(args.records) / "teacher-eval.tar.gz").is_file())


def trained_student(run: Path, name: str) -> Path:
    """The teacher run's student `name`, trained again at its tuned settings where the run holds only its records
    (a run gone on from another's records with `scotd pipeline --restore`: its weights stayed behind)."""
    from scotd_harness.pipeline import PipelineConfig, Run
    from scotd_harness.student_stages import is_trained, make_student

    out = run / "students" / name
    if not is_trained(out):
        cfg = PipelineConfig.model_validate(json.loads((run / "config.json").read_text()))
        log.info("teacher %s: no weights in %s; training it at its tuned settings", name, run)
        make_student(Run(run, cfg), name, say=lambda msg: log.info("%s", msg))
    return out


def teacher_student(args) -> str:
    """The csqa-palm student that teaches: --teacher-student, else the one the run's export stage chose."""
    if args.teacher_student:
        return args.teacher_student
    stages = json.loads((Path(args.teacher_run) / "stages.json").read_text())["stages"]
    if "export" not in stages:
        raise SystemExit(f"{args.teacher_run}: its export stage has not finished (no teacher yet); name a trained "
                         "student with --teacher-student")
    return stages["export"]["student"]


def arms() -> dict[str, tuple[int, list[str]]]:
    """name -> (chains per question used, filters), in report order."""
    out = {f"n{n}-{flt}": (n, [flt]) for flt in CURVE_FILTERS for n in CURVE_N}
    out.update({f"n16-{name}": (16, filters) for name, filters in SELECTIONS.items()})
    return out


def _inside(path: Path, root: Path) -> str:
    """`path` as the stage configs name it: relative to the run folder the script works in (see main)."""
    return os.path.relpath(path.resolve(), root.resolve())


def sample_config(args, teacher: Path, exclude: Path | None, root: Path) -> dict:
    return {"task": "csqa", "teacher": f"onnx:{_inside(teacher, root)}", "n": args.n, "temperature": args.temperature,
            "max_new_tokens": args.max_new_tokens, "train_split": "train", "train_limit": args.questions,
            "exclude_questions": _inside(exclude, root) if exclude else None, "filters": ["all"], "seed": args.seed,
            "evaluate_teacher": False}


def arm_config(args, corpus: Path, n: int, filters: list[str], first: bool, root: Path) -> dict:
    """One arm's pipeline config; only the first arm scores the base student (the same model in every arm)."""
    return {
        "task": "csqa", "corpus_source": _inside(corpus, root), "n": n, "filters": filters, "student": args.student,
        "arms": ["scotd"], "seed": args.seed, "eval_backend": "onnx", "eval_limit": args.eval_limit,
        "evaluate_undistilled": first,
        "eval_batch_size": 16, "export_quantize": None,
        "train": {"max_steps": args.max_steps, "learning_rate": args.lr, "per_device_train_batch_size": args.batch_size,
                  "chains": "all", "max_length": 320, "batching": "packed", "precision": "auto",
                  "warmup_ratio": 0.05, "dev_fraction": args.dev_fraction, "save_total_limit": 2, "logging_steps": 10,
                  "disable_tqdm": True,
                  **({"max_dev_questions": 48, "eval_steps": 100} if args.dev_fraction > 0 else {})},
    }


class WallClock:
    """Seconds each stage has run, summed over sittings (the study takes several on 2 cores), kept in a JSON file
    beside the records every `every` seconds and when a stage ends: a killed sitting loses at most that much."""

    def __init__(self, path: Path, every: float = 60.0):
        self.path, self.every = path, every
        self.seconds: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def stage(self, name: str):
        started, before, done = time.monotonic(), self.seconds.get(name, 0.0), threading.Event()

        def save() -> None:
            from scotd_harness import atomic

            with self._lock:
                self.seconds[name] = round(before + time.monotonic() - started, 1)
                atomic.write_json(self.path, self.seconds)

        def tick() -> None:
            while not done.wait(self.every):
                save()

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            yield
        finally:
            done.set()
            ticker.join()
            save()


def run_stage(name: str, config: dict, out: Path, until: str, records: Path, check_teacher: bool = True) -> None:
    """One pipeline run, restored from its archive in `records` where it has one, its records kept there."""
    from scotd_harness.pipeline import PipelineConfig, run_pipeline

    started = time.monotonic()
    cfg = PipelineConfig.from_dict(config, source=name, check_teacher=check_teacher)
    archive = records / f"{name}.tar.gz"
    run_pipeline(cfg, out, until=until, say=lambda msg: log.info("%s: %s", name, msg),
                 restore=archive if archive.is_file() else None, keep_records=archive)
    log.info("%s: done (%.0f s this call)", name, time.monotonic() - started)


#: seconds each stage has run, over every sitting (WallClock), in the records folder
WALL_TIME = "wall_time.json"

#: the teacher's evaluation: the prompt it sampled with (its few-shot CoT exemplars), decoded greedily
TEACHER_TASK = "scotd_csqa_fewshot"


def teacher_eval(args, root: Path, teacher: Path, records: Path) -> Path:
    """Score the teacher on CSQA dev into root/teacher-eval (a run folder of its own: config.json and
    eval/teacher/), its records kept in `records` and restored from there like every stage's."""
    from scotd_harness import atomic, run_records
    from scotd_harness.errors import ScotdError
    from scotd_harness.evaluate import evaluate

    out, archive = root / "teacher-eval", records / "teacher-eval.tar.gz"
    # the export's weights and quantisation, not only its folder: another student exported to the same place is
    # another teacher. Where the export is gone (teacher_done), its recorded scores are kept as they are.
    export = json.loads((teacher / "scotd.json").read_text()) if (teacher / "scotd.json").is_file() else None
    identity = ("student_sha256", "quantization")
    config = {"teacher": f"onnx:{_inside(teacher, root)}", **{k: (export or {}).get(k) for k in identity},
              "task": TEACHER_TASK, "limit": args.eval_limit, "seed": args.seed, "batch_size": 16}
    results = out / "eval" / "teacher" / "results.json"

    def differences(old: dict, current: dict) -> list[str]:
        keys = (set(old) | set(current)) - (set(identity) if export is None else set())
        return sorted(k for k in keys if old.get(k) != current.get(k))

    def refuse(where: Path, diff: list[str]) -> ScotdError:
        return ScotdError(f"{where} holds the teacher's scores under other settings ({', '.join(diff)} differ); "
                          f"move it aside to score this teacher again")

    if (out / "config.json").is_file():
        diff = differences(json.loads((out / "config.json").read_text()), config)
        if diff:
            raise refuse(out, diff)
    elif archive.is_file():
        try:
            run_records.put(run_records.read(archive, config, differences), out)
        except ScotdError as e:
            raise ScotdError(f"{e} (move {archive} aside to score this teacher again)") from e
    if results.is_file():
        log.info("teacher-eval: evaluated already (%s)", results.relative_to(root))
        return results
    if export is None:
        raise ScotdError(f"the teacher's export {teacher} is not there to score (rerun with its --teacher-run)")
    started = time.monotonic()
    atomic.write_json(out / "config.json", config)
    output = evaluate(_inside(teacher, root), [TEACHER_TASK], model_type="scotd-onnx", limit=args.eval_limit,
                      batch_size=config["batch_size"], output_dir=results.parent, seed=args.seed, log_samples=True)
    log.info("teacher-eval:\n%s", output.table)
    run_records.pack(out, archive)
    log.info("teacher-eval: done (%.0f s)", time.monotonic() - started)
    return results


def greedy_accuracy(results: Path, task: str) -> tuple[float, int | None] | None:
    """(accuracy, questions scored) of `task` in an lm-eval results file; None where it holds no accuracy."""
    data = json.loads(results.read_text())
    scores = data.get("results", {}).get(task, {})
    acc = next((v for k, v in scores.items() if k.startswith("acc,")), None)
    if acc is None:
        log.warning("%s: no accuracy of %s in it", results, task)
        return None
    return acc, (data.get("n-samples") or {}).get(task, {}).get("effective")


def write_results(args, root: Path, teacher: Path, clock: WallClock) -> None:
    """The sweep report over the finished arms, written into --results with the teacher's own accuracy first (a
    run with no arm scored yet gets the teacher's figures alone)."""
    from scotd_harness import atomic
    from scotd_harness.report import write_report

    done = [root / name for name in arms() if (root / name / "eval" / "scotd" / "results.json").is_file()]
    report, md = {}, "No arm has been scored yet.\n"
    teacher_scores = teacher_accuracy(args, root, teacher)
    if done:
        write_report(done[0], sweep=done[1:], references=teacher_references(teacher_scores))
        report = json.loads((done[0] / "report.json").read_text())
        md = (done[0] / "report.md").read_text()
    report["teacher"] = teacher_scores
    report["wall_time_s"] = {**clock.seconds, "total": round(sum(clock.seconds.values()), 1)}
    # (the folders are this machine's, not settings of the study)
    report["settings"] = {k: v for k, v in vars(args).items()
                          if k not in ("run_dir", "records", "results", "teacher_run", "teacher", "exclude")}
    results = Path(args.results)
    # the report's charts beside the page, under this study's names, its links pointing at them
    for chart, name in (("accuracy_vs_n.png", f"{args.tag}.png"), ("accuracy.png", f"{args.tag}_accuracy.png")):
        if done and (done[0] / chart).is_file():
            with atomic.atomic_open(results / name, "wb") as f:
                f.write((done[0] / chart).read_bytes())
            md = md.replace(f"]({chart})", f"]({name})")
    atomic.write_text(results / f"{args.tag}.md",
                      teacher_section(report["teacher"]) + "\n"
                      + wall_time_line(report["wall_time_s"], finished=len(done) == len(arms())) + "\n" + md)
    atomic.write_json(results / f"{args.tag}.json", report, default=str)


def teacher_accuracy(args, root: Path, teacher: Path) -> dict:
    """The teacher's greedy CSQA dev accuracy (from the csqa-palm run that made it) and, on the sampled
    questions, its per-chain accuracy at T=1.0 and the accuracy of a majority vote over its chains."""
    from collections import Counter, defaultdict

    from scotd_harness.corpus import read_corpus

    out = {"export": _inside(teacher, root)}
    if args.teacher_run:
        run = Path(args.teacher_run)
        out["student"] = student = teacher_student(args)
        results = run / "eval" / student / "results.json"
        scored = greedy_accuracy(results, "scotd_csqa") if results.is_file() else None
        if scored:
            out["dev_greedy_fp32"], out["dev_greedy_fp32_questions"] = scored
    results = root / "teacher-eval" / "eval" / "teacher" / "results.json"
    scored = greedy_accuracy(results, TEACHER_TASK) if results.is_file() else None
    if scored:
        out["dev_greedy_fewshot"], out["dev_greedy_fewshot_questions"] = scored
    corpus = root / "sample" / "corpus.jsonl"
    if corpus.is_file():
        rows = list(read_corpus(corpus))
        votes, gold = defaultdict(Counter), {}
        for r in rows:
            gold[r.id] = r.answer
            if r.prediction:
                votes[r.id][r.prediction] += 1
        out["sampled_questions"] = len(gold)
        out["per_chain"] = sum(bool(r.correct) for r in rows) / len(rows) if rows else None
        out["majority_vote"] = (sum(votes[q].most_common(1)[0][0] == a for q, a in gold.items() if votes[q])
                                / len(gold)) if gold else None
    return out


def teacher_references(teacher: dict) -> dict[str, float]:
    """The teacher's dev accuracies, drawn beside the curve: is a student above its teacher?"""
    labels = {"dev_greedy_fewshot": "teacher, few-shot (as it sampled)",
              "dev_greedy_fp32": "teacher, zero-shot (fp32)"}
    return {label: teacher[key] for key, label in labels.items() if teacher.get(key) is not None}


def teacher_section(teacher: dict) -> str:
    """The teacher's accuracy as markdown, to read the curve against."""
    def pct(value) -> str:
        return "not measured" if value is None else f"{100 * value:.1f}%"

    def questions(key: str) -> str:
        return "" if teacher.get(key) is None else str(teacher[key])

    lines = [f"# Teacher: `{teacher.get('student', teacher['export'])}` (its export `{teacher['export']}` sampled)", "",
             "| measured | questions | accuracy |", "| --- | ---: | ---: |",
             (f"| CSQA dev, greedy, the export, with the few-shot prompt it sampled with | "
              f"{questions('dev_greedy_fewshot_questions')} | {pct(teacher.get('dev_greedy_fewshot'))} |")]
    if "dev_greedy_fp32" in teacher:
        lines.append(f"| CSQA dev, greedy, zero-shot as a student (fp32, from its own run) | "
                     f"{questions('dev_greedy_fp32_questions')} | {pct(teacher['dev_greedy_fp32'])} |")
    if teacher.get("sampled_questions"):
        lines += [(f"| the sampled train questions: each chain (T=1.0) | {teacher['sampled_questions']} | "
                   f"{pct(teacher['per_chain'])} |"),
                  (f"| the same: majority vote over each question's chains | {teacher['sampled_questions']} | "
                   f"{pct(teacher['majority_vote'])} |")]
    return "\n".join(lines) + "\n"


def wall_time_line(seconds: dict, finished: bool = False) -> str:
    """The study's wall time; `finished` (every arm scored) makes it the total rather than a figure so far."""
    def hm(value: float) -> str:
        return f"{int(value // 3600)}:{int(value % 3600 // 60):02d}"

    stages = ", ".join(f"{name} {hm(value)}" for name, value in seconds.items() if name != "total")
    which = "Wall time of the whole study" if finished else "Wall time so far"
    return f"{which}, summed over sittings (h:mm): {hm(seconds['total'])} ({stages}).\n"


def main(argv=None):
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    args = parse_args(argv)
    args.records = args.records or str(Path(args.results) / f"{args.tag}_records")
    # every folder resolved before the script moves into the run folder, where the stage configs' paths start
    for key in ("run_dir", "records", "results", "teacher_run", "teacher", "exclude"):
        if getattr(args, key):
            setattr(args, key, str(Path(getattr(args, key)).resolve()))
    if Path(args.student).exists():
        args.student = str(Path(args.student).resolve())
    for var in ("SCOTD_DATA_DIR", "SCOTD_CACHE"):
        if os.environ.get(var):
            os.environ[var] = str(Path(os.environ[var]).resolve())
    root, records = Path(args.run_dir), Path(args.records)
    root.mkdir(parents=True, exist_ok=True)
    clock = WallClock(records / WALL_TIME)
    if args.report_only:
        teacher, exclude = teacher_of(args, export_missing=False)
    else:
        with clock.stage("teacher"):
            teacher, exclude = teacher_of(args)
    teacher, exclude = (p.resolve() if p else p for p in (teacher, exclude))
    started_in = os.getcwd()
    os.chdir(root)
    try:
        if args.report_only:
            unrestored = sorted(a.name.removesuffix(".tar.gz") for a in records.glob("*.tar.gz")
                                if not (root / a.name.removesuffix(".tar.gz") / "config.json").is_file())
            if unrestored:  # the page would lose their figures
                raise SystemExit(f"{', '.join(unrestored)}: recorded in {records} but not in {root} (run the study "
                                 "once: it restores each stage from its records first)")
            write_results(args, root, teacher, clock)
        else:
            run_study(args, root, records, teacher, exclude, clock)
    finally:
        os.chdir(started_in)


def run_study(args, root: Path, records: Path, teacher: Path, exclude: Path | None, clock: WallClock) -> None:
    with clock.stage("sample"):
        run_stage("sample", sample_config(args, teacher, exclude, root), root / "sample", "sample", records,
                  check_teacher=not teacher_done(args))
    with clock.stage("teacher-eval"):
        teacher_eval(args, root, teacher, records)
    write_results(args, root, teacher, clock)
    corpus = root / "sample" / "corpus.jsonl"
    wanted = set(args.arms.split(",")) if args.arms else None
    for i, (name, (n, filters)) in enumerate(arms().items()):
        if wanted is not None and name not in wanted:
            continue
        with clock.stage(name):
            run_stage(name, arm_config(args, corpus, n, filters, i == 0, root), root / name, "evaluate", records)
        write_results(args, root, teacher, clock)
    write_results(args, root, teacher, clock)


if __name__ == "__main__":
    main()
