"""`scotd data fetch`: official files land verified, resumable and atomically, from a real HTTP mirror on 127.0.0.1.

The mirror serves the real data folder (SCOTD_DATA_DIR) through a stdlib HTTP server with Range support added, so
the downloads, resumes and hash checks below are the ones a user's run does; only the host differs (`--mirror`).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import threading
import zipfile
from functools import partial
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner

from scotd_harness.cli import cli
from scotd_harness.data_fetch import LOCK_NAME, MANIFEST, DataFile, fetch
from scotd_harness.datasets import load_examples
from scotd_harness.errors import ScotdError

CSQA_DEV = "commonsenseqa/dev_rand_split.jsonl"
IMDB_DEV = ("contrast_sets_imdb/dev_original.tsv", "contrast_sets_imdb/dev_contrast.tsv")
#: csqa dev + the IMDb dev pair: about 650 KB, all on the mirror (the test files are kept aside there).
SMALL = ["--task", "csqa", "--task", "imdb_original", "--split", "validation"]


class _MirrorHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus `Range: bytes=N-` (which the stdlib handler ignores), per-path replacement
    bodies (a corrupted mirror), and a log of (path, Range header, bytes sent)."""

    range_support: ClassVar[bool] = True
    replaced: ClassVar[dict[str, bytes]] = {}
    log: ClassVar[list[tuple[str, str | None, int]]] = []

    def do_GET(self):
        rel = self.path.lstrip("/")
        body = self.replaced.get(rel)
        if body is None:
            path = Path(self.translate_path(self.path))
            if not path.is_file():
                self.send_error(404)
                return
            body = path.read_bytes()
        wanted = self.headers.get("Range")
        start = 0
        if self.range_support and wanted and wanted.startswith("bytes=") and wanted.endswith("-"):
            start = int(wanted[len("bytes="):-1])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                self.log.append((rel, wanted, 0))
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])
        self.log.append((rel, wanted, len(body) - start))

    def log_message(self, *args):  # keep pytest's output clean
        pass


@contextlib.contextmanager
def serve(root: Path, *, range_support: bool = True, replaced: dict[str, bytes] | None = None):
    """A real HTTP server for `root` on 127.0.0.1 in a thread; yields (base URL, request log)."""
    handler = type("Handler", (_MirrorHandler,), {"range_support": range_support, "replaced": replaced or {}, "log": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.log
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _run(*args: str):
    return CliRunner().invoke(cli, ["data", "fetch", *args])


def test_pinned_hashes_match_the_official_copies(data_dir):
    """Every file of the data folder is in the manifest with its exact hash (the partial QuaRel rebuild aside)."""
    pinned = {f.path: f.sha256 for f in MANIFEST}
    here = {
        p.relative_to(data_dir).as_posix(): p
        for p in data_dir.rglob("*")
        if p.is_file() and p.name not in ("SOURCES.md", LOCK_NAME)
        and not p.relative_to(data_dir).as_posix().startswith("quarel/")
    }
    assert len(here) >= 25
    assert sorted(set(here) - set(pinned)) == []
    assert {rel: _sha(p.read_bytes()) for rel, p in here.items()} == {rel: pinned[rel] for rel in here}


def test_fetch_a_task_subset_from_a_mirror_then_rerun_skips(tmp_path, data_dir):
    out = tmp_path / "data"
    with serve(data_dir) as (url, log):
        result = _run(str(out), *SMALL, "--mirror", url)
        assert result.exit_code == 0, result.output
        wanted = [CSQA_DEV, *IMDB_DEV]
        landed = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != LOCK_NAME]
        assert sorted(landed) == sorted(wanted)  # no part or temp file left beside them
        for rel in wanted:
            assert (out / rel).read_bytes() == (data_dir / rel).read_bytes()
            assert f"fetched  {rel} from {url}/{rel} (sha256 ok)" in result.output
        assert result.output.splitlines()[-1] == f"SCOTD_DATA_DIR={out.resolve()}"
        assert load_examples("csqa", "validation", data_dir=out) == load_examples("csqa", "validation", data_dir=data_dir)
        contrast = load_examples("imdb_contrast", "validation", data_dir=out)
        assert len(contrast) == 100 and contrast == load_examples("imdb_contrast", "validation", data_dir=data_dir)

        mtimes = {rel: (out / rel).stat().st_mtime_ns for rel in wanted}
        requests = len(log)
        again = _run(str(out), *SMALL, "--mirror", url)
        assert again.exit_code == 0, again.output
        assert len(log) == requests  # nothing was downloaded again
        assert all(f"present  {rel} (sha256 ok)" in again.output for rel in wanted)
        assert "0 file(s) fetched, 3 already present" in again.output
        assert {rel: (out / rel).stat().st_mtime_ns for rel in wanted} == mtimes


@pytest.mark.parametrize(
    ("range_support", "cut"), [(True, 100_000), (False, 100_000), (True, None)], ids=["range", "no-range", "whole-part"]
)
def test_a_partial_download_is_resumed_or_restarted(tmp_path, data_dir, range_support, cut):
    source = (data_dir / CSQA_DEV).read_bytes()
    cut = len(source) if cut is None else cut  # None: killed after the last byte, before the rename
    part = tmp_path / "data" / (CSQA_DEV + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(source[:cut])
    with serve(data_dir, range_support=range_support) as (url, log):
        result = _run(str(tmp_path / "data"), "--task", "csqa", "--split", "validation", "--mirror", url)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / CSQA_DEV).read_bytes() == source and not part.exists()
    assert log == [(CSQA_DEV, f"bytes={cut}-", len(source) - cut if range_support else len(source))]
    if not range_support:
        assert "does not resume downloads" in result.output
    elif cut < len(source):
        assert f"resume   {CSQA_DEV} from byte {cut}" in result.output
    else:
        assert f"the partial download already holds {cut} bytes" in result.output


def test_a_corrupted_mirror_fails_and_leaves_nothing_in_place(tmp_path, data_dir):
    out = tmp_path / "data"
    good = out / IMDB_DEV[0]
    good.parent.mkdir(parents=True)
    good.write_bytes((data_dir / IMDB_DEV[0]).read_bytes())
    good_mtime = good.stat().st_mtime_ns
    corrupted = bytearray((data_dir / CSQA_DEV).read_bytes())
    corrupted[1000] ^= 0x01
    official = next(f.sha256 for f in MANIFEST if f.path == CSQA_DEV)
    with serve(data_dir, replaced={CSQA_DEV: bytes(corrupted)}) as (url, _):
        result = _run(str(out), *SMALL, "--mirror", url)
        assert result.exit_code == 1
        assert "Traceback" not in result.output
        assert (f"{out.resolve() / CSQA_DEV}: the download from {url}/{CSQA_DEV} has sha256 {_sha(bytes(corrupted))}, "
                f"not the pinned {official}") in result.output
        assert not (out / CSQA_DEV).exists() and not (out / (CSQA_DEV + ".part")).exists()
        assert good.stat().st_mtime_ns == good_mtime and good.read_bytes() == (data_dir / IMDB_DEV[0]).read_bytes()
        # One bad file does not block the others; the summary names it.
        assert (out / IMDB_DEV[1]).read_bytes() == (data_dir / IMDB_DEV[1]).read_bytes()
        assert f"1 file(s) could not be fetched (see above): {CSQA_DEV}" in result.output

        # A present file with another hash is left alone; with --replace, a bad download still does not touch it.
        (out / CSQA_DEV).write_text("my own edit\n")
        for extra in ([], ["--replace"]):
            result = _run(str(out), "--task", "csqa", "--split", "validation", "--mirror", url, *extra)
            assert result.exit_code == 1 and "Traceback" not in result.output
            assert (out / CSQA_DEV).read_text() == "my own edit\n"
        assert "not the pinned" in result.output

    with serve(data_dir) as (url, _):
        left = _run(str(out), "--task", "csqa", "--split", "validation", "--mirror", url)
        assert left.exit_code == 1 and "differ from the official ones and were left untouched" in left.output
        assert (out / CSQA_DEV).read_text() == "my own edit\n"
        fixed = _run(str(out), "--task", "csqa", "--split", "validation", "--mirror", url, "--replace")
        assert fixed.exit_code == 0, fixed.output
        assert (out / CSQA_DEV).read_bytes() == (data_dir / CSQA_DEV).read_bytes()


def test_a_missing_file_and_a_busy_folder_are_clean_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "data"
    with serve(tmp_path / "empty") as (url, _):
        args = [str(out), "--task", "csqa", "--split", "validation"]
        result = CliRunner(env={"SCOTD_DATA_MIRROR": url}).invoke(cli, ["data", "fetch", *args])
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert f"could not download it: {url}/{CSQA_DEV}: HTTP 404" in result.output

        from filelock import FileLock

        with FileLock(out / LOCK_NAME):  # another fetch into the same folder
            busy = _run(*args, "--mirror", url)
        assert busy.exit_code == 1 and "another `scotd data fetch` is writing into this folder" in busy.output


def test_archive_members_are_extracted_and_each_verified(tmp_path, data_dir):
    """The OpenBookQA route (zip, then members): a zip of the real files in the release's member layout."""
    members = [f for f in MANIFEST if f.path in ("openbookqa/Main/dev.jsonl", "openbookqa/Main/openbook.txt")]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in members:
            zf.writestr(f.member, (data_dir / f.path).read_bytes())
    mirror = tmp_path / "mirror" / "openbookqa"
    mirror.mkdir(parents=True)
    (mirror / "OpenBookQA-V1-Sep2018.zip").write_bytes(buf.getvalue())
    archive = DataFile("openbookqa", "openbookqa/OpenBookQA-V1-Sep2018.zip", _sha(buf.getvalue()))
    out = tmp_path / "data"
    stale = out / "openbookqa" / "Main" / ".dev.jsonl.x1y2.tmp"  # what an extraction killed midway leaves
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    with serve(tmp_path / "mirror") as (url, _):
        summary = fetch(out, mirror=url, files=[archive, *members], say=lambda line: None)
    assert summary.fetched == [archive.path, *(f.path for f in members)]
    for f in members:
        assert (out / f.path).read_bytes() == (data_dir / f.path).read_bytes()
    assert len(load_examples("openbookqa", "validation", data_dir=out)) == 500
    assert not stale.exists()

    # A member whose bytes are not the pinned ones is refused, and nothing lands.
    wrong = DataFile("openbookqa", "openbookqa/Main/wrong.jsonl", "0" * 64, archive=archive.path, member=members[0].member)
    said: list[str] = []
    summary = fetch(out, files=[archive, wrong], say=said.append)
    assert summary.failed == [wrong.path] and summary.present == [archive.path]
    assert f"member {members[0].member} of {Path(archive.path).name} has sha256 {members[0].sha256}, not the pinned" \
        in said[-1]
    assert not (out / wrong.path).exists() and not list((out / "openbookqa" / "Main").glob(".*.tmp"))

    # Members chosen alone bring their archive along; when it cannot be had, the archive and each member are named.
    (tmp_path / "empty").mkdir()
    with serve(tmp_path / "empty") as (url, _):
        summary = fetch(tmp_path / "other", mirror=url, files=[members[0]], say=said.append)
    assert summary.failed == [archive.path, members[0].path]
    assert f"{archive.path}: could not download it: {url}/{archive.path}: HTTP 404" in said[-2]


def test_sets_without_a_hub_copy_load_through_the_verified_fetch(tmp_path, data_dir, monkeypatch):
    """With no data folder, the IMDb contrast set (no hub copy) is fetched once into the cache by the same pinned,
    hash-checked download, here from the mirror; a corrupted copy is refused and nothing is cached."""
    monkeypatch.delenv("SCOTD_DATA_DIR", raising=False)
    monkeypatch.setenv("SCOTD_CACHE", str(tmp_path / "cache"))
    rel = "contrast_sets_imdb/dev_contrast.tsv"
    with serve(data_dir, replaced={rel: b"Sentiment\tText\nPositive\tnot the official bytes\n"}) as (url, _):
        monkeypatch.setenv("SCOTD_DATA_MIRROR", url)
        with pytest.raises(ScotdError, match=f"could not fetch {rel}"):
            load_examples("imdb_contrast", "validation")
        assert not (tmp_path / "cache" / "data" / rel).exists()
    with serve(data_dir) as (url, log):
        monkeypatch.setenv("SCOTD_DATA_MIRROR", url)
        examples = load_examples("imdb_original", "validation")
        assert examples == load_examples("imdb_original", "validation", data_dir=data_dir)
        assert (tmp_path / "cache" / "data" / IMDB_DEV[0]).read_bytes() == (data_dir / IMDB_DEV[0]).read_bytes()
        requests = len(log)
        load_examples("imdb_original", "validation")
        assert len(log) == requests  # cached: fetched once
