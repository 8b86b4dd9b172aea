"""Shard I/O: round trip, atomic rolling writes, and every rejection reason from a real broken sample."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from copyguard.curation.records import Rejection, RejectReason, Sample
from copyguard.curation.shards import ShardWriter, iter_samples, read_shard_file, split_member_name
from tests.helpers import jpeg_bytes, write_tar


def _sample(i: int, **kw) -> Sample:
    data = jpeg_bytes(i)
    return Sample(key=f"k{i:04d}", caption=f"caption number {i}", image=data, width=32, height=32, **kw)


def _read(path: Path, **kw) -> list[Sample | Rejection]:
    return list(read_shard_file(str(path), **kw))


def test_round_trip_preserves_samples(tmp_path: Path) -> None:
    samples = [_sample(i, metadata={"source": "test", "i": i} if i % 2 else {}) for i in range(7)]
    with ShardWriter(str(tmp_path), max_count=3) as writer:
        writer.write_all(samples)
    assert [os.path.basename(p) for p in writer.paths] == [f"shard-00000{i}.tar" for i in range(3)]
    back = list(iter_samples(str(tmp_path / "*.tar")))
    assert all(isinstance(r, Sample) for r in back)
    assert [(r.key, r.caption, r.image, r.metadata, r.width) for r in back] == [
        (s.key, s.caption, s.image, s.metadata, 32) for s in samples
    ]
    assert back[0].shard.endswith("shard-000000.tar")


def test_writer_rolls_by_bytes_and_is_deterministic(tmp_path: Path) -> None:
    samples = [_sample(i) for i in range(6)]
    one = len(samples[0].image) + 2048
    for sub in ("a", "b"):
        with ShardWriter(str(tmp_path / sub), max_count=100, max_bytes=2 * one) as writer:
            writer.write_all(samples)
    a = sorted((tmp_path / "a").iterdir())
    b = sorted((tmp_path / "b").iterdir())
    assert len(a) >= 3
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_writer_never_exposes_partial_shards(tmp_path: Path) -> None:
    writer = ShardWriter(str(tmp_path), max_count=10)
    writer.write(_sample(0))
    visible = [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert visible == []  # in progress: only a hidden temp file
    with pytest.raises(RuntimeError), writer:
        writer.write(_sample(1))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # aborted: temp removed, nothing final


def test_gzip_shards_are_read(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "g.tar.gz", [("a.jpg", jpeg_bytes(1)), ("a.txt", b"hello")], gzip=True)
    (rec,) = _read(path)
    assert isinstance(rec, Sample) and rec.caption == "hello"


def test_member_name_split() -> None:
    assert split_member_name("dir/abc.def.JPG") == ("dir/abc", "def.jpg")
    assert split_member_name("abc") == ("abc", "")


def _bad_png_too_large() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (300, 300), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


GOOD = jpeg_bytes(7)

CASES = {
    RejectReason.CORRUPT_IMAGE: [("a.jpg", GOOD[: len(GOOD) // 2]), ("a.txt", b"cut jpeg")],
    RejectReason.MISSING_IMAGE: [("a.txt", b"caption without image")],
    RejectReason.MISSING_CAPTION: [("a.jpg", GOOD)],
    RejectReason.NON_UTF8_CAPTION: [("a.jpg", GOOD), ("a.txt", b"caf\xe9 \xff\xfe")],
    RejectReason.EMPTY_CAPTION: [("a.jpg", GOOD), ("a.txt", b"  \n\t ")],
    RejectReason.EMPTY_FILE: [("a.jpg", b""), ("a.txt", b"zero byte image")],
    RejectReason.UNSAFE_MEMBER_NAME: [("../../etc/a.jpg", GOOD), ("../../etc/a.txt", b"escape")],
    RejectReason.BAD_METADATA: [("a.jpg", GOOD), ("a.txt", b"ok"), ("a.json", b"{not json")],
    RejectReason.IMAGE_TOO_LARGE: [("a.png", _bad_png_too_large()), ("a.txt", b"big")],
}


@pytest.mark.parametrize("reason", list(CASES), ids=lambda r: r.value)
def test_each_bad_sample_becomes_a_rejection(tmp_path: Path, reason: RejectReason) -> None:
    members = [("good.jpg", GOOD), ("good.txt", b"a fine sample"), *CASES[reason]]
    path = write_tar(tmp_path / "s.tar", members)
    records = _read(path, max_pixels=200 * 200)
    assert isinstance(records[0], Sample) and records[0].key == "good"
    assert len(records) == 2, records
    bad = records[1]
    assert isinstance(bad, Rejection)
    assert bad.reason == reason
    assert bad.detail and bad.shard == str(path)


def test_duplicate_key_within_a_shard(tmp_path: Path) -> None:
    members = [
        ("a.jpg", GOOD),
        ("a.txt", b"one"),
        ("b.jpg", GOOD),
        ("b.txt", b"two"),
        ("a.jpg", GOOD),
        ("a.txt", b"x"),
    ]
    records = _read(write_tar(tmp_path / "d.tar", members))
    assert [type(r).__name__ for r in records] == ["Sample", "Sample", "Rejection"]
    assert records[2].key == "a" and records[2].reason == RejectReason.DUPLICATE_KEY


def test_truncated_tar_keeps_earlier_samples(tmp_path: Path) -> None:
    big = jpeg_bytes(3, size=128)
    path = write_tar(
        tmp_path / "t.tar", [("a.jpg", GOOD), ("a.txt", b"first"), ("b.jpg", big), ("b.txt", b"second")]
    )
    data = path.read_bytes()
    cut = data.index(b"b.jpg") + 512 + len(big) // 2
    path.write_bytes(data[:cut])
    records = _read(path)
    assert isinstance(records[0], Sample) and records[0].key == "a"
    assert isinstance(records[1], Rejection) and records[1].reason == RejectReason.TRUNCATED_TAR
    assert records[1].key == "b"
    assert len(records) == 2


def test_empty_and_unreadable_shards(tmp_path: Path) -> None:
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    (rec,) = _read(empty)
    assert (
        isinstance(rec, Rejection) and rec.reason == RejectReason.EMPTY_SHARD and rec.key == "shard:empty.tar"
    )
    zero = tmp_path / "zero.tar"
    zero.write_bytes(b"")
    (rec,) = _read(zero)
    assert rec.reason == RejectReason.EMPTY_SHARD
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar archive at all" * 40)
    (rec,) = _read(junk)
    assert rec.reason in (RejectReason.CORRUPT_TAR, RejectReason.TRUNCATED_TAR)


def test_symlink_member_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "l.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("a.jpg")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
        txt = tarfile.TarInfo("a.txt")
        txt.size = 2
        tar.addfile(txt, io.BytesIO(b"hi"))
    (rec,) = _read(path)
    assert rec.reason == RejectReason.UNSAFE_MEMBER_NAME
