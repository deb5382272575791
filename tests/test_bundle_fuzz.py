"""The bundle reader and the SHA256SUMS parser under hypothesis, for a bounded time.

Archives are generated member by member (plain, climbing, absolute, Unicode and empty
names; files, folders, symbolic and hard links, devices; duplicates), some with a correct
SHA256SUMS. Whatever comes in, unpacking either succeeds or raises StaleArtifactError,
never anything else, and nothing is ever written outside the run folder.
"""
from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.device.bundle import parse_sum_line, unpack_bundle
from pipeline.errors import StaleArtifactError

PARTS = st.sampled_from(["a", "b", "evalset", "..", ".", "", "ü", "x y", "model.fp32.onnx", "bundle.json",
                         "SHA256SUMS", "../../escape", "/tmp", "C:\\\\x"])
NAMES = st.lists(PARTS, min_size=1, max_size=4).map("/".join)
KINDS = st.sampled_from([tarfile.REGTYPE, tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
                         tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
MEMBERS = st.lists(st.tuples(NAMES, KINDS, st.binary(max_size=64), NAMES), max_size=8)
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def build_archive(path: Path, members: list, sums: bool, record: bool) -> None:
    listed = []
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, data, target in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = target
            payload = data if kind == tarfile.REGTYPE else b""
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload else None)
            if kind == tarfile.REGTYPE:
                listed.append(f"{hashlib.sha256(payload).hexdigest()}  {name}")
        extra = {"bundle.json": b'{"format": "edgeresnet.bundle/1"}'} if record else {}
        for name, data in extra.items():
            listed.append(f"{hashlib.sha256(data).hexdigest()}  {name}")
        if sums:
            extra["SHA256SUMS"] = ("\n".join(listed) + "\n").encode()
        for name, data in extra.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def snapshot(root: Path) -> dict:
    return {p: (p.is_symlink(), p.stat().st_size if p.is_file() else None) for p in root.rglob("*")}


@FUZZ
@given(members=MEMBERS, sums=st.booleans(), record=st.booleans())
def test_unpacking_any_archive_refuses_cleanly_or_stays_in_the_run(members, sums, record) -> None:
    with tempfile.TemporaryDirectory() as folder:
        jail = Path(folder)
        archive = jail / "bundle.tar.gz"
        build_archive(archive, members, sums, record)
        run = jail / "runs" / "deep" / "run"
        before = snapshot(jail)
        try:
            names = unpack_bundle(archive, run)
        except StaleArtifactError:
            names = None
        after = snapshot(jail)
        outside = {p for p in set(after) - set(before) if run not in p.parents and p != run}
        assert outside <= {jail / "runs", jail / "runs" / "deep"}, outside  # only the run's own parents
        if names is None:
            assert not run.exists()
        else:
            assert all((run / n).is_file() and not (run / n).is_symlink() for n in names)
            assert all(run in (run / n).resolve().parents for n in names)


@FUZZ
@given(line=st.text(max_size=120))
def test_the_sums_parser_takes_only_well_formed_lines(line: str) -> None:
    name, digest = parse_sum_line(line)
    if name is not None:
        assert line == f"{digest}  {name}" and len(digest) == 64 and set(digest) <= set("0123456789abcdef")


@FUZZ
@given(digest=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64), name=st.text(min_size=1, max_size=40))
def test_well_formed_sums_lines_parse_back(digest: str, name: str) -> None:
    assert parse_sum_line(f"{digest}  {name}") == (name, digest)
