"""`scotd data fetch DIR`: the official dataset files, from their public release locations, verified by sha256.

Why a pinned hash per file: the loaders trust the files under SCOTD_DATA_DIR, and the figures this project
reports are only comparable when everyone reads the same bytes. So no file is moved into place before its
sha256 equals the one pinned here (from the data folder's provenance notes, SOURCES.md, which trace each hash
to the official release). A download goes to `<file>.part` next to its target; a rerun resumes it with an HTTP Range request
where the server supports it (else it starts over), hashes it, then renames it over the target atomically.
A hash mismatch deletes the part file and names the file and both hashes; an existing file is never touched
unless the new one has passed its check (and a present file with another hash is left alone unless `replace`).

Archives (OpenBookQA's and QuaRel's release zips) are kept in the layout too: the zip is verified first, then each
member the loaders read is extracted and verified against its own pinned hash.

`mirror` swaps the base of every URL for a server laid out like the data folder
(`<mirror>/commonsenseqa/dev_rand_split.jsonl`), for sites without access to the public hosts, and for tests.
"""

from __future__ import annotations

import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .checksums import sha256_of
from .errors import ScotdError

#: Environment variable that plays the part of `--mirror`.
MIRROR_ENV = "SCOTD_DATA_MIRROR"
#: Lock file in the data folder, held while a fetch writes into it.
LOCK_NAME = ".scotd-data-fetch.lock"
#: Files at least this large get a tqdm progress bar (on a terminal).
PROGRESS_MIN_BYTES = 1 << 20
_CHUNK = 1 << 16
_TIMEOUT_S = 60


@dataclass(frozen=True)
class DataFile:
    """One official file: where it lands under the data folder, its pinned sha256, and where it comes from.

    A file either has `urls` (tried in order until one answers; every one must serve the same bytes) or is
    `member` of the archive at data-folder path `archive`, itself a `DataFile`. `split` is the loaders' split the
    file holds (None for archives and split-free files such as OpenBookQA's book of facts)."""

    group: str
    path: str
    sha256: str
    urls: tuple[str, ...] = ()
    split: str | None = None
    archive: str | None = None
    member: str | None = None


def _github(repo: str, commit: str, path: str) -> str:
    """A file of a public GitHub repository at a pinned commit (raw bytes, no HTML)."""
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


def _split_of(name: str) -> str:
    """The loaders' split of a release file named with train / dev / test."""
    lowered = name.lower()
    for word, split in (("train", "train"), ("dev", "validation"), ("test", "test")):
        if word in lowered:
            return split
    raise ValueError(f"no split in {name!r}")


def _build_manifest() -> tuple[DataFile, ...]:
    files: list[DataFile] = []

    # CommonsenseQA v1.11: the official S3 files; hashes equal HF datasets' recorded download_checksums.
    for name, split, sha in (
        ("train_rand_split.jsonl", "train", "58ffa3c8472410e24b8c43f423d89c8a003d8284698a6ed7874355dedd09a2fb"),
        ("dev_rand_split.jsonl", "validation", "3210497fdaae614ac085d9eb873dd7f4d49b6f965a93adadc803e1229fd8a02a"),
        ("test_rand_split_no_answers.jsonl", "test", "b426896d71a9cd064cf01cfaf6e920817c51701ef66028883ac1af2e73ad5f29"),
    ):
        url = f"https://s3.amazonaws.com/commensenseqa/{name}"
        files.append(DataFile("csqa", f"commonsenseqa/{name}", sha, (url,), split))

    # OpenBookQA V1 (Sep 2018): the official zip, with a pinned GitHub copy of the same bytes as a fallback.
    obqa_zip = "openbookqa/OpenBookQA-V1-Sep2018.zip"
    files.append(DataFile(
        "openbookqa", obqa_zip, "82368cf05df2e3b309c17d162e10b888b4d768fad6e171e0a041954c8553be46",
        ("https://s3-us-west-2.amazonaws.com/ai2-website/data/OpenBookQA-V1-Sep2018.zip",
         _github("kanishkamisra/minicons-experiments", "56a7273209085b57dde740bf74670935e3ac2af1",
                 "data/obqa/OpenBookQA-V1-Sep2018.zip")),
    ))
    for name, split, sha in (
        ("Main/train.jsonl", "train", "388ce25926fa33b573ba6556d7245a6185f612dedf919871b6acb9340c8497a5"),
        ("Main/dev.jsonl", "validation", "a08f720be757a0f0b6aaf8e1e1162c2b05a882c9c031d2559ba3d5467d023466"),
        ("Main/test.jsonl", "test", "feb2bd9bfa6161dca4c44ce90e51e8cdada83eb5061407fcdc5005e44aaf2313"),
        ("Main/openbook.txt", None, "42daf7849bd9ad1096599279e8875038fe8bf55e35c4757d67ec5a2f51ad795c"),
        ("Additional/train_complete.jsonl", "train", "804c5117c096a047e3e826627efd472902e6717e51f5deb1ab831a6465f6098f"),
        ("Additional/dev_complete.jsonl", "validation", "aa697e2c1ea4cd4ce7bbf1c64dc3385940a1399448a00a9d62a78b85109f627d"),
        ("Additional/test_complete.jsonl", "test", "2a5566ba69bb7196e3b24aa26fcfeea717272dfad6527aebd5e3a6fc0a121ace"),
        ("Additional/crowdsourced-facts.txt", None, "94e6da07211b801dc983c7bc5d8643adf1b383d6702186090d75b9b2ff3c7611"),
    ):
        files.append(DataFile("openbookqa", f"openbookqa/{name}", sha, split=split, archive=obqa_zip,
                              member=f"OpenBookQA-V1-Sep2018/Data/{name}"))

    # QuaRel v1: the official zip (hash: HF datasets' download_checksums for it); the member hashes are the
    # Git LFS oids of the official files in liujch1998/rainier @ 118e83cb (see SOURCES.md, section 3).
    quarel_zip = "quarel/quarel-dataset-v1-nov2018.zip"
    files.append(DataFile(
        "quarel", quarel_zip, "95437eb445467676a9b2fbda4b2021b88d788ff483ed31e63988c67ac4c6a27c",
        ("https://s3-us-west-2.amazonaws.com/ai2-website/data/quarel-dataset-v1-nov2018.zip",),
    ))
    for name, split, sha in (
        ("train", "train", "7c4462c48019c8b6b79942d6ba44a726de880c86daa735bda771c11980a5ee36"),
        ("dev", "validation", "3fa9742a069da0075791e0404ce0adce6c47fa2dafcdf9c633afd38489810c15"),
        ("test", "test", "02fbab06c45155b672c6eaafe29cbd91baff1065e3dcee88b2fad9707ea5269d"),
    ):
        files.append(DataFile("quarel", f"quarel/quarel-v1-{name}.jsonl", sha, split=split, archive=quarel_zip,
                              member=f"quarel-dataset-v1/quarel-v1-{name}.jsonl"))

    # IMDb contrast set (Gardner et al. 2020), allenai/contrast-sets at a pinned commit.
    for name, sha in (
        ("dev_original.tsv", "349a8821bb8932d7ad236e4a6d3ed01fd9b99fdae1c7c6a1a9f3d442de4a4304"),
        ("dev_contrast.tsv", "ec5c984b43c045613dc00c4fd044f362e78351eef82bf07e4429583decaa0e92"),
        ("test_original.tsv", "9dc78ddeb5cb6ff6060d24df33a83b6d29f9828994f4b1a5e0086f7e774713bd"),
        ("test_contrast.tsv", "3bcb3bd41218b6a5d7bef7fe020a243919f3df0f12f55291b25ef8bbdbe04173"),
    ):
        url = _github("allenai/contrast-sets", "e2b87316ba7b30093bc9ffbc340e6550cab79f67", f"IMDb/data/{name}")
        files.append(DataFile("imdb", f"contrast_sets_imdb/{name}", sha, (url,), _split_of(name)))

    # CommonsenseQA 2.0, allenai/csqa2 at a pinned commit.
    for name, sha in (
        ("CSQA2_train.json.gz", "cdaccded500ea4093ee88ee28d9f61f2b210ee09c6b996d1242d66aeac0b3b32"),
        ("CSQA2_dev.json.gz", "2804671317521bb79784037482b7e84e891c707f6ac369607209059b3df3b884"),
        ("CSQA2_test_no_answers.json.gz", "0c5b41de67ac538b246cf9b6afbed01f60d2bbd07323ff3ed8740c8ce38d31f4"),
    ):
        url = _github("allenai/csqa2", "3f57a4a6a1d51fe6a9b462b59be67c08d41fdc39", f"dataset/{name}")
        files.append(DataFile("csqa2", f"csqa2/{name}", sha, (url,), _split_of(name)))

    # CoS-E v1.11 human explanations for CSQA, salesforce/cos-e at a pinned commit.
    for name, sha in (
        ("cose_train_v1.11.jsonl", "001661838a3185ee96b94ea012370f1e815a63f346bab3341ad2778f9e30def1"),
        ("cose_dev_v1.11.jsonl", "6102766eb61c9f50b36513ca234bf542cf880b170cd84e16374eb22a82f6ba11"),
        ("cose_train_v1.11_processed.jsonl", "4c0ccfd34243cf7af62b441643437769663edcb980b991487f766b97a547e9bd"),
        ("cose_dev_v1.11_processed.jsonl", "a8367c94901ba249e48bcec76eaff9e7b91cec0f0e4d94879975d7d1b952bc41"),
    ):
        url = _github("salesforce/cos-e", "fd0cafcc3e30fd24e3e1742934e8fcbf677315c9", f"data/v1.11/{name}")
        files.append(DataFile("cose", f"cose_v1.11/{name}", sha, (url,), _split_of(name)))

    # Distilling step-by-step's PaLM-540B CSQA chains: upstream ships them only inside datasets.zip, so they come
    # from the fork that committed the unzipped folder (a second fork holds byte-identical blobs).
    for name, sha in (
        ("cqa_train.json", "09601f7b3239eb4c0a3be16c4b897d0c30905e9bc38cf36c77831d98bd37d9fb"),
        ("cqa_test.json", "caf4f47b8afac62a80f0517e1af3eba2af11de0c7c6f3baf3742fb6390d99dfb"),
        ("llm/train_CoT_0.json", "632167edcb645336a0ff1194fe87a1821fefdb02515679d178b167619903fff1"),
        ("llm/train_CoT_1.json", "8d14f619696c2bf3f0989d3a47ee8120f047af4eddaf23eb64610941cb453796"),
        ("llm/train_CoT_2.json", "25e559368c7e69dba359245395463a669f2fcef91a3b7b89613ff41bed0fbd8f"),
        ("llm/train_CoT_3.json", "db2a50477c463dd84a4b7ee2dedae323ff8746f20ca0c4a4619c03e04140ddf5"),
        ("llm/train_CoT_4.json", "52ccbf961db874a47968599f8411372a39f280f91413df7d90bcbcea291b9836"),
        ("llm/train_CoT_5.json", "0d238b1c5c4be3630bf14c15a176985b4a2e7bcf5fa5a93d24e9d89ccde06974"),
        ("llm/train_CoT_6.json", "af81b051cefa61be0b513f9e002b9eeab7160c18731732b59138fede91fccee4"),
        ("llm/train_CoT_7.json", "0cd6eba4d2449fb295d66e3dd9998ab59f6246820ca07e0fd1cc61dfcc3e6b3d"),
        ("llm/train_CoT_8.json", "02c156f92540f7b2469d252c814a2a87dad47616f828db3e7e236edd72f21b61"),
        ("llm/train_CoT_9.json", "7448c4cd5a9416ccb1e0c021e2b3bf2e697dc70173ff6f08d5b64b56d5fe8038"),
        ("llm/test_CoT_0.json", "02860e4fa44b4c1f08ed29513abf74f433345e534c51418448b40869ed752a01"),
        ("llm/test_CoT_1.json", "44f1fc36088d5beed937c204ae43ca09d74fd0ea6a784fa89207b7e88c37fb15"),
    ):
        fork, commit = "maxh119Z/distilling-step-by-step1", "5b76a471c46c61f45114eab6621ffdff12d676b6"
        url = _github(fork, commit, f"datasets/cqa/{name}")
        # Its `cqa_test` and `test_CoT_*` files are CSQA dev, so they belong to the validation split.
        split = "train" if "train" in name else "validation"
        files.append(DataFile("distilling-step-by-step", f"distilling_step_by_step_cqa/{name}", sha, (url,), split))
    return tuple(files)


#: Every official file `scotd data fetch` knows, in fetch order (an archive before its members).
MANIFEST: tuple[DataFile, ...] = _build_manifest()

#: `--task` name -> group of files. Task names of the dataset registry, plus the two CSQA explanation corpora.
GROUPS: dict[str, str] = {
    "csqa": "csqa",
    "openbookqa": "openbookqa",
    "quarel": "quarel",
    "imdb_original": "imdb",
    "imdb_contrast": "imdb",
    "csqa2": "csqa2",
    "cose": "cose",
    "distilling-step-by-step": "distilling-step-by-step",
}


SPLITS = ("train", "validation", "test")


def select(tasks: Iterable[str] = (), splits: Iterable[str] = ()) -> list[DataFile]:
    """The files of the given tasks and splits (all when none is given), in manifest order.

    With splits, split-free files (OpenBookQA's facts) are left out; an archive comes along only when a member
    chosen needs extracting."""
    tasks, splits = list(tasks), list(splits)
    unknown = [t for t in tasks if t not in GROUPS]
    if unknown:
        raise ScotdError(f"no official files for {', '.join(map(repr, unknown))}; known: {', '.join(GROUPS)}")
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ScotdError(f"unknown split {', '.join(map(repr, bad))}; known: {', '.join(SPLITS)}")
    groups = {GROUPS[t] for t in tasks} or set(GROUPS.values())
    chosen = [f for f in MANIFEST if f.group in groups]
    return [f for f in chosen if f.split in splits] if splits else chosen


@dataclass
class FetchSummary:
    """What one fetch did, by data-folder path. `mismatched`: present files with another hash, left alone;
    `failed`: files that could not be put in place (each already reported with its reason)."""

    fetched: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class _Fetcher:
    def __init__(self, root: Path, mirror: str | None, replace: bool, say: Callable[[str], None]):
        self.root, self.replace, self.say = root, replace, say
        self.mirror = mirror.rstrip("/") if mirror else None
        self.summary = FetchSummary()
        self._in_place: dict[str, bool] = {}  # path -> holds its pinned bytes now (False: it could not)

    def run(self, files: list[DataFile]) -> FetchSummary:
        """Every file is tried, so one dead host does not block the rest; failures are reported as they happen."""
        by_path = {f.path: f for f in MANIFEST} | {f.path: f for f in files}
        for f in files:
            try:
                self.ensure(f, by_path)
            except ScotdError as e:
                self.summary.failed.append(f.path)
                self.say(f"FAILED   {e}")
        return self.summary

    def ensure(self, f: DataFile, by_path: dict[str, DataFile]) -> bool:
        """Put `f`'s pinned bytes in place; False when they are not (a present file with another hash is left)."""
        if f.path in self._in_place:
            return self._in_place[f.path]
        self._in_place[f.path] = False  # until it is in place: an archive that failed is not tried once per member
        target = self.root / f.path
        if target.is_file():
            actual = sha256_of(target)
            if actual == f.sha256:
                self.summary.present.append(f.path)
                self.say(f"present  {f.path} (sha256 ok)")
                self._in_place[f.path] = True
                return True
            if not self.replace:
                self.summary.mismatched.append(f.path)
                self.say(f"DIFFERS  {f.path}: sha256 {actual}, official {f.sha256}; left untouched")
                return False
            self.say(f"replace  {f.path}: sha256 {actual} is not the official {f.sha256}")
        if f.archive:
            archive = by_path[f.archive]
            try:
                archive_ok = self.ensure(archive, by_path)
            except ScotdError as e:  # reported as the archive's own failure; this member then fails below
                self.summary.failed.append(archive.path)
                self.say(f"FAILED   {e}")
                archive_ok = False
            if not archive_ok:
                raise ScotdError(f"{target}: not extracted: its archive {archive.path} is not in place (see above)")
            self._extract(f, self.root / archive.path, target)
            self.say(f"extracted {f.path} from {archive.path} (sha256 ok)")
        else:
            source = self._download_verified(f, target)
            self.say(f"fetched  {f.path} from {source} (sha256 ok)")
        self.summary.fetched.append(f.path)
        self._in_place[f.path] = True
        return True

    def _urls(self, f: DataFile) -> tuple[str, ...]:
        return (f"{self.mirror}/{f.path}",) if self.mirror else f.urls

    def _download_verified(self, f: DataFile, target: Path) -> str:
        """Download into `<target>.part` (resuming it), check the hash, rename over the target; returns the URL."""
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        errors = []
        for url in self._urls(f):
            try:
                _download(url, part, f.path, self.say)
            except (OSError, http.client.HTTPException) as e:  # HTTP status, network, cut transfer: try the next URL
                errors.append(f"{url}: {_reason(e)}")
                continue
            actual = sha256_of(part)
            if actual != f.sha256:
                part.unlink()
                raise ScotdError(
                    f"{target}: the download from {url} has sha256 {actual}, not the pinned {f.sha256}; "
                    f"it was deleted and nothing was written"
                )
            _fsync(part)
            os.replace(part, target)
            return url
        kept = f" (the partial download {part.name} is kept; a rerun resumes it)" if part.is_file() else ""
        raise ScotdError(f"{target}: could not download it: {'; '.join(errors)}{kept}")

    def _extract(self, f: DataFile, archive: Path, target: Path) -> None:
        """Copy one archive member to a temp file beside the target, check its hash, rename it into place."""
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with zipfile.ZipFile(archive) as zf, os.fdopen(fd, "wb") as out:
                try:
                    src = zf.open(f.member)
                except KeyError:
                    raise ScotdError(f"{archive}: has no member {f.member!r} (needed for {f.path})") from None
                with src:
                    shutil.copyfileobj(src, out, _CHUNK)
                out.flush()
                os.fsync(out.fileno())
            actual = sha256_of(Path(tmp))
            if actual != f.sha256:
                raise ScotdError(
                    f"{target}: member {f.member} of {archive.name} has sha256 {actual}, not the pinned {f.sha256}; "
                    f"nothing was written"
                )
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _reason(e: Exception) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    return str(e)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _download(url: str, part: Path, label: str, say: Callable[[str], None]) -> None:
    """Append the rest of `url` to `part`, asking for it with a Range request when `part` already holds bytes.

    A server that ignores Range answers 200 with the whole file: then the part file starts over. A 416 means the
    part file already holds at least the whole file; the hash check that follows decides whether it is right."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "scotd-harness data fetch", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            say(f"resume   {label}: the partial download already holds {offset} bytes")
            return
        raise
    with response:
        resumed = bool(offset) and response.status == 206 and _content_range_start(response) == offset
        if offset and not resumed:
            say(f"restart  {label}: the server does not resume downloads (no Range support); starting over")
        elif resumed:
            say(f"resume   {label} from byte {offset}")
        start = offset if resumed else 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        with open(part, "ab" if resumed else "wb") as out, _progress(label, total, start) as bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                bar.update(len(chunk))


def _content_range_start(response) -> int | None:
    """The first byte of a 206 answer, from `Content-Range: bytes START-END/TOTAL`."""
    value = response.headers.get("Content-Range", "")
    unit, _, spec = value.partition(" ")
    start = spec.split("-", 1)[0]
    return int(start) if unit == "bytes" and start.isdigit() else None


def _progress(label: str, total: int | None, initial: int):
    """A tqdm bar for large files on a terminal (tqdm turns itself off when stderr is not a TTY)."""
    from tqdm import tqdm

    big = total is None or total >= PROGRESS_MIN_BYTES
    return tqdm(total=total, initial=initial, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                disable=None if big else True, leave=False)


def _remove_stale_temp_files(root: Path, files: list[DataFile], say: Callable[[str], None]) -> None:
    """Temp files a killed extraction left (`.<name>.*.tmp`) are removed; `.part` downloads are kept to resume."""
    for f in files:
        target = root / f.path
        if target.parent.is_dir():
            for stale in target.parent.glob(f".{target.name}.*.tmp"):
                stale.unlink(missing_ok=True)
                say(f"removed  {stale.relative_to(root)} (left by an interrupted extraction)")


def fetch(
    data_dir: str | os.PathLike,
    tasks: Iterable[str] = (),
    splits: Iterable[str] = (),
    mirror: str | None = None,
    replace: bool = False,
    say: Callable[[str], None] = print,
    files: list[DataFile] | None = None,
) -> FetchSummary:
    """Fetch the official files of `tasks` and `splits` (all when empty) into `data_dir`, each verified by sha256.

    Present files with the right hash are skipped. A present file with another hash is left untouched and
    listed in the summary (`replace=True` fetches the official file over it, once that has passed its check).
    A file that cannot be fetched (host down, hash mismatch) is reported through `say`, listed in
    `summary.failed`, and the others are still fetched.
    `files` overrides the selection by task (tests use it for a synthetic archive)."""
    root = Path(data_dir).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise ScotdError(f"{root} exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    chosen = files if files is not None else select(tasks, splits)
    # One fetch per folder at a time: two would append to the same part files and remove each other's temp files.
    from filelock import FileLock, Timeout

    try:
        with FileLock(root / LOCK_NAME, timeout=0):
            _remove_stale_temp_files(root, chosen, say)
            return _Fetcher(root, mirror, replace, say).run(chosen)
    except Timeout:
        raise ScotdError(f"{root}: another `scotd data fetch` is writing into this folder; wait for it") from None
