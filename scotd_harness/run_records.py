"""A run's records: the small files that hold what its long stages found, packed so a run can go on elsewhere.

A study on 2 cores outlasts a sitting, and a run directory on scratch disk may not outlast the machine. What a
stage found is small (tuning scores, lm-eval results and logged samples, training records); what it made to find
it is large (weights, exports). `records.tar.gz`, rewritten after every stage, holds the first kind;
`scotd pipeline --restore FILE` puts them into a new run directory of the same config, and the stages then skip
what is recorded: a scored tuning candidate is not retrained, a scored model is not rescored, and a student whose
every evaluation is recorded is trained again only if a later stage needs its weights (the export of the best one).
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import json
import os
import tarfile
from pathlib import Path, PurePosixPath

from . import atomic
from .errors import ScotdError

ARCHIVE = "records.tar.gz"

#: what a run's records are (paths relative to the run directory); never weights, exports or corpora (the corpora
#: are rebuilt from the data by the sample and filter stages in seconds; a sampled corpus resumes by itself), nor a
#: tuning candidate's folder (tune/scores.json holds its scores and dev losses; a folder without weights would be
#: taken for the tuned student)
RECORDS = (
    "config.json",
    "tune/scores.json",
    "students/*/scotd.json",
    "eval/*/results.json",
    "eval/*/samples_*.jsonl",
    "eval/*/*/results.json",
    "eval/*/*/samples_*.jsonl",
)


def _is_record(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) and name.count("/") == pattern.count("/") for pattern in RECORDS)


def record_files(root: Path) -> list[Path]:
    return sorted({p for pattern in RECORDS for p in root.glob(pattern) if p.is_file()})


def pack(root: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the run's records into `out` (default: records.tar.gz in the run) atomically; returns the path.
    Paths under the run directory are written relative to it (`./students/scotd`): the records are to be read
    elsewhere, where the run directory has another name."""
    root = Path(root)
    out = Path(out) if out is not None else root / ARCHIVE
    prefixes = sorted({str(root.resolve()), str(root.absolute())}, key=len, reverse=True)
    buffer = io.BytesIO()
    # fixed times and ownership: the same records make the same bytes, so a committed archive changes only when a
    # record does
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in record_files(root):
            data = path.read_bytes()
            for prefix in prefixes:
                data = data.replace(prefix.encode() + b"/", b"./")
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    with atomic.atomic_open(out, "wb") as f:
        f.write(gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0))
    return out


def _members(archive: Path) -> dict[str, bytes]:
    """name -> bytes of every member, refusing an archive that is not a run's records (an absolute path, `..`, a
    link or a file that is not a record), so restoring cannot write outside the run or plant weights."""
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            out = {}
            for member in tar.getmembers():
                name = PurePosixPath(member.name)
                if not member.isfile() or name.is_absolute() or ".." in name.parts or not _is_record(member.name):
                    raise ScotdError(f"{archive}: {member.name!r} is not a run record (records are "
                                     f"{', '.join(RECORDS)}); not restoring from it")
                out[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ScotdError(f"{archive}: not a readable records archive ({e})") from e
    if "config.json" not in out:
        raise ScotdError(f"{archive}: no config.json in it, so it cannot be matched to a run; not restoring")
    return out


def restore(archive: str | os.PathLike, root: str | os.PathLike, current_config: dict, differences) -> list[str]:
    """Put the archive's records into run directory `root`, for a run of `current_config`; returns what was put.

    The archive's config must be the run's (`differences(old, current)` lists the settings that differ), or the
    records would describe another experiment. A file already in the run is never replaced: the run's own records
    are newer than, or the same as, the archive's."""
    archive = Path(archive)
    members = _members(archive)
    try:
        old = json.loads(members["config.json"])
    except json.JSONDecodeError as e:
        raise ScotdError(f"{archive}: its config.json is not JSON ({e})") from e
    diff = differences(old, current_config)
    if diff:
        raise ScotdError(f"{archive} holds the records of a run with other settings ({', '.join(diff)} differ); "
                         f"not restoring them into {root}")
    root = Path(root)
    put = []
    for name, data in members.items():
        target = root / name
        if target.exists():
            continue
        with atomic.atomic_open(target, "wb") as f:
            f.write(data)
        put.append(name)
    return sorted(put)
