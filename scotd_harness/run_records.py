"""A run's records: the small files that hold what its long stages found, packed so a run can go on elsewhere.

A study on 2 cores outlasts a sitting, and a run directory on scratch disk may not outlast the machine. What a
stage found is small (tuning scores, training records, lm-eval results and per-question outcomes); what it made to
find it is large (weights, exports). `records.tar.gz`, rewritten after every stage, tuning candidate, training and
scored model, holds the first kind; `scotd pipeline --restore FILE` puts them into a new run directory of the same
config, and the stages then skip what is recorded: a scored tuning candidate is not retrained, a scored model is
not rescored, and a student is trained again only where a later stage needs its weights (the export of the best
one, or an evaluation not recorded).

The records are meant to travel (a results folder, another machine), so they carry no copy of the data: a logged
sample keeps the question's id, the gold label, the choice labels, the model's responses and its scores, not the
question text or the prompt; a sampled chain keeps everything but its question's text and choices, which a restore
joins back from the data by id (`with_questions`). Paths inside the run are written relative to it.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
from pathlib import Path, PurePosixPath

from . import atomic
from .errors import ScotdError

ARCHIVE = "records.tar.gz"

#: what a run's records are (paths relative to the run directory); never weights or exports, nor a tuning
#: candidate's folder (tune/scores.json holds its scores and dev losses; a folder without weights would be taken
#: for the tuned student). An imported corpus is rebuilt from the data by the sample and filter stages in seconds;
#: a sampled one is a record (SAMPLED_CORPUS): sampling it again would take hours and give other chains.
RECORDS = (
    "config.json",
    "tune/scores.json",
    "students/*/scotd.json",
    "eval/*/results.json",
    "eval/*/samples_*.jsonl",
    "eval/*/*/results.json",
    "eval/*/*/samples_*.jsonl",
)
SAMPLED_CORPUS = ("corpus.jsonl", "corpus.jsonl.meta.json")
#: the sha256 of the sampled corpus as the run held it: a restore that joins the questions back from other data
#: (another copy, another normalisation) is refused rather than given chains of questions the teacher never saw
CORPUS_DIGEST = "corpus.jsonl.sha256"

#: the fields of a logged lm-eval sample that the report reads (eval_samples, report), besides the metric values
_SAMPLE_FIELDS = ("doc_id", "target", "resps", "filtered_resps", "filter", "metrics")
_DOC_FIELDS = ("task", "id", "split", "answer")


def _is_record(name: str) -> bool:
    return name in SAMPLED_CORPUS or name == CORPUS_DIGEST or any(
        fnmatch.fnmatchcase(name, pattern) and name.count("/") == pattern.count("/") for pattern in RECORDS)


def record_files(root: Path) -> list[Path]:
    patterns = RECORDS
    config = root / "config.json"
    if config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("corpus_source") == "sample":
        patterns += SAMPLED_CORPUS
    return sorted({p for pattern in patterns for p in root.glob(pattern) if p.is_file()})


def _slim_sample(rec: dict) -> dict:
    """A logged sample without the data it was asked about: the choices keep their labels, not their texts."""
    out = {k: rec[k] for k in _SAMPLE_FIELDS if k in rec}
    out.update({m: rec[m] for m in rec.get("metrics", []) if m in rec})
    doc = rec.get("doc")
    if isinstance(doc, dict):
        out["doc"] = {k: doc[k] for k in _DOC_FIELDS if k in doc}
        if isinstance(doc.get("choices"), list):
            out["doc"]["choices"] = [[c[0], ""] if isinstance(c, (list, tuple)) and c else c for c in doc["choices"]]
    return out


def _lines(data: str) -> list[str]:
    """The JSON lines of a file's text, each with its newline: split on "\n" only (a row's text may hold U+2028 and
    the like, which str.splitlines splits on), blank lines dropped, and a last line without its newline (the
    sampler may be writing it) left out."""
    return [line + "\n" for line in data[: data.rfind("\n") + 1].split("\n") if line.strip()]


def _corpus_records(path: Path) -> dict[str, bytes]:
    """A sampled corpus without its questions' text and choices (the data), which `with_questions` puts back,
    and the digest of the corpus it came from."""
    lines = _lines(path.read_text(encoding="utf-8"))
    slim = []
    for line in lines:
        row = json.loads(line)
        row.pop("question", None)
        row.pop("choices", None)
        slim.append(json.dumps(row, ensure_ascii=False) + "\n")
    digest = hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()
    return {"corpus.jsonl": "".join(slim).encode("utf-8"), CORPUS_DIGEST: (digest + "\n").encode()}


def with_questions(members: dict[str, bytes], examples, source: str) -> dict[str, bytes]:
    """The records with the question text and choices of each sampled chain joined back from `examples` (the
    run's train split) by id, rebuilt as the sampler writes a row; refused unless that gives back, byte for
    byte, the corpus that was packed."""
    if "corpus.jsonl" not in members:
        return members
    from .corpus import CorpusRow

    by_id = {str(ex.id): ex for ex in examples}
    lines = []
    for lineno, line in enumerate(_lines(members["corpus.jsonl"].decode("utf-8")), 1):
        row = json.loads(line)
        ex = by_id.get(str(row.get("id")))
        if ex is None:
            raise ScotdError(f"{source}: corpus.jsonl line {lineno}: question id {row.get('id')!r} is not in the "
                             "run's train split of this data; not restoring")
        row["question"], row["choices"] = ex.question, [list(c) for c in ex.choices]
        lines.append(CorpusRow.from_dict(row, f"{source}: corpus.jsonl", lineno).to_json() + "\n")
    corpus = "".join(lines).encode("utf-8")
    digest = members.get(CORPUS_DIGEST, b"").decode().strip()
    if hashlib.sha256(corpus).hexdigest() != digest:
        raise ScotdError(f"{source}: the chains joined to this data's questions are not the corpus that was packed "
                         f"(sha256 {digest or 'missing'}): the data differs from the copy they were sampled on; "
                         "not restoring")
    return {**members, "corpus.jsonl": corpus}


def behind(members: dict[str, bytes], root: str | os.PathLike) -> list[str]:
    """What run directory `root` holds less of than the records: chains of the sampled corpus, tuning candidates.
    `put` keeps the run's own files, and the run then packs its records over the archive's, so going on from a
    run that is behind its archive would throw the archive's extra findings away."""
    root = Path(root)
    out = []
    corpus = root / "corpus.jsonl"
    if "corpus.jsonl" in members and corpus.is_file():
        have, kept = len(_lines(corpus.read_text(encoding="utf-8"))), len(_lines(members["corpus.jsonl"].decode()))
        if have < kept:
            out.append(f"corpus.jsonl holds {have} chains, the records {kept}")
    scores = root / "tune" / "scores.json"
    if "tune/scores.json" in members and scores.is_file():
        missing = set(json.loads(members["tune/scores.json"])) - set(json.loads(scores.read_text(encoding="utf-8")))
        if missing:
            out.append(f"tune/scores.json lacks the candidates {', '.join(sorted(missing))}")
    return out


def _path_pattern(folders: list[str], relative: str | None = None) -> re.Pattern:
    """A folder's path where it starts a path: at the start of a string or after `=`, a space or a quote
    (lm-eval's `pretrained=...`, `<class '...'>`), followed by `/` or the end; `relative` only before a `/`."""
    absolute = "|".join(re.escape(f) for f in sorted(set(folders), key=len, reverse=True))
    given = rf"|{re.escape(relative)}(?=/)" if relative else ""
    return re.compile(rf"""(?:^|(?<=[=\s'"]))(?:(?:{absolute})(?=/|$){given})""")


#: the scotd task folder of any install, as lm-eval records it (a task's YAML, a filter class of utils.py): the
#: evaluation may have run from a checkout or a virtual environment other than the one that packs the records
_ANY_TASKS_DIR = re.compile(r"""(?:^|(?<=[=\s'"]))/[^\s'"]*/tasks(?=/(?:utils\.|_scotd_|[\w-]+/scotd_\w*\.yaml))""")


def _relative_paths(value, rewrites: list[tuple[re.Pattern, str]]):
    """Every string in a JSON value with the run directory's path made `.`, and the scotd task folder's
    (lm-eval records each task's YAML file) made `scotd_harness/tasks`."""
    if isinstance(value, str):
        for pattern, replacement in rewrites:
            value = pattern.sub(replacement, value)
        return value
    if isinstance(value, list):
        return [_relative_paths(v, rewrites) for v in value]
    if isinstance(value, dict):
        return {k: _relative_paths(v, rewrites) for k, v in value.items()}
    return value


def _packed(path: Path, name: str, rewrites: list[tuple[re.Pattern, str]]) -> bytes:
    if name.startswith("eval/") and name.endswith(".jsonl"):
        lines = (json.loads(line) for line in _lines(path.read_text(encoding="utf-8")))
        return "".join(json.dumps(_slim_sample(rec), ensure_ascii=False) + "\n" for rec in lines).encode()
    if name.endswith(".json") and name != "config.json":  # (the config is compared as written)
        data = _relative_paths(json.loads(path.read_text(encoding="utf-8")), rewrites)
        return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()
    return path.read_bytes()


def pack(root: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the run's records into `out` (default: records.tar.gz in the run) atomically; returns the path."""
    root = Path(root)
    out = Path(out) if out is not None else root / ARCHIVE
    from .lm_eval_hook import tasks_dir

    # the run's path as the stages wrote it: absolute, or as given to --out
    rewrites = [(_path_pattern([str(root.absolute()), str(root.resolve())],
                               None if root.is_absolute() else str(root)), "."),
                (_path_pattern([str(tasks_dir())]), "scotd_harness/tasks"), (_ANY_TASKS_DIR, "scotd_harness/tasks")]
    buffer = io.BytesIO()
    # fixed times and ownership: the same records make the same bytes, so a committed archive changes only when a
    # record does
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in record_files(root):
            name = path.relative_to(root).as_posix()
            packed = _corpus_records(path) if name == "corpus.jsonl" else {name: _packed(path, name, rewrites)}
            for name, data in packed.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
    with atomic.atomic_open(out, "wb") as f:
        f.write(gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0))
    return out


def read(archive: str | os.PathLike, current_config: dict, differences) -> dict[str, bytes]:
    """name -> bytes of the archive's records, checked before anything is written: every member must be a record
    (no absolute path, `..`, link or other file, so restoring cannot write outside the run or plant weights), and
    the archive's config the run's (`differences(old, current)` names the settings that differ), or the records
    would describe another experiment."""
    archive = Path(archive)
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            members = {}
            for member in tar.getmembers():
                name = PurePosixPath(member.name)
                if not member.isfile() or name.is_absolute() or ".." in name.parts or not _is_record(member.name):
                    raise ScotdError(f"{archive}: {member.name!r} is not a run record (records are "
                                     f"{', '.join(RECORDS + SAMPLED_CORPUS)}); not restoring from it")
                members[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ScotdError(f"{archive}: not a readable records archive ({e})") from e
    if "config.json" not in members:
        raise ScotdError(f"{archive}: no config.json in it, so it cannot be matched to a run; not restoring")
    try:
        old = json.loads(members["config.json"])
    except json.JSONDecodeError as e:
        raise ScotdError(f"{archive}: its config.json is not JSON ({e})") from e
    diff = differences(old, current_config)
    if diff:
        raise ScotdError(f"{archive} holds the records of a run with other settings ({', '.join(diff)} differ); "
                         "not restoring them")
    return members


def put(members: dict[str, bytes], root: str | os.PathLike) -> list[str]:
    """Write the records (from `read`) into run directory `root`; a file already there is kept (the run's own
    records are newer than, or the same as, the archive's). Returns what was written."""
    root = Path(root)
    written = []
    for name, data in sorted(members.items()):
        target = root / name
        if name == CORPUS_DIGEST or target.exists():  # (the digest is checked by with_questions, not kept)
            continue
        with atomic.atomic_open(target, "wb") as f:
            f.write(data)
        written.append(name)
    return written
