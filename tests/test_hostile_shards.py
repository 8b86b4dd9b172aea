"""Hostile shards (issues 13 and 16): every case is read to a record with a reason, none kills the job.

Each fixture is built in code: long PAX/GNU keys, non-UTF-8 member names, a repeated key in adjacent
members, a huge 1-bit PNG, a large zero member in a gzip tar, an EPS image, a 1 MB caption, an image that
Pillow cannot identify. The accounting is checked against an independent listing of the tar.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tarfile
import tracemalloc
from itertools import islice
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from PIL import EpsImagePlugin, Image

from copyguard.curation.images import decode_image, to_rgb_array
from copyguard.curation.manifest import read_manifest
from copyguard.curation.records import Rejection, RejectReason, Sample
from copyguard.curation.shards import ShardWriter, iter_samples, read_shard_file
from copyguard.pipelines.curate import run
from copyguard.train.config import DataConfig
from copyguard.train.finetune_data import make_loader
from tests.helpers import jpeg_bytes

GOOD = jpeg_bytes(5)
LONG_KEY = "deep/" + "k" * 140  # 145 characters: not a USTAR name
NON_UTF8 = b"caf\xe9".decode("utf-8", "surrogateescape")  # what tarfile makes of a latin-1 name
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"
ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


def hostile_tar(path: Path, members: list[tuple[str, bytes]], fmt: int = tarfile.GNU_FORMAT,
                gzip: bool = False) -> Path:  # fmt: skip
    """Write ``members`` as given; names may hold surrogate escapes (written as their raw bytes)."""
    with tarfile.open(
        path, "w:gz" if gzip else "w", format=fmt, encoding="utf-8", errors="surrogateescape"
    ) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def tar_member_count(path: Path) -> int:
    """Non-directory members, listed by tarfile itself (independent of the reader's grouping)."""
    with tarfile.open(path) as tar:
        return sum(1 for m in tar.getmembers() if not m.isdir())


def png_1bit(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (side, side), 1).save(buf, format="PNG")
    return buf.getvalue()


def hostile_members() -> list[tuple[str, bytes]]:
    """One shard with every hostile case of the issues, between good samples."""
    return [
        ("good0.jpg", GOOD),
        ("good0.txt", b"a fine sample"),
        (f"{LONG_KEY}.jpg", GOOD),
        (f"{LONG_KEY}.txt", b"a sample with a long key"),
        (f"{NON_UTF8}.jpg", GOOD),
        (f"{NON_UTF8}.txt", b"a latin-1 file name"),
        ("rep.jpg", GOOD),
        ("rep.txt", b"first copy"),
        ("rep.jpg", jpeg_bytes(6)),
        ("rep.txt", b"second copy"),
        ("eps.jpg", EPS),
        ("eps.txt", b"postscript posing as a jpeg"),
        ("longcap.jpg", GOOD),
        ("longcap.txt", b"word " * 200_000),
        ("garbage.jpg", b"\x00\x01 no known image format at all" * 4),  # Pillow: "cannot identify"
        ("garbage.txt", b"unidentifiable bytes"),
        ("extra.jpg", GOOD),
        ("extra.txt", b"with an unused member"),
        ("extra.cls", b"7"),
        ("good1.jpg", GOOD),
        ("good1.txt", b"another fine sample"),
    ]


EXPECTED = {
    "good0": "kept",
    LONG_KEY: "kept",
    "caf\\xe9": "non_utf8_name",
    "rep": "kept",
    "eps": "unsupported_image_format",
    "longcap": "caption_too_long",
    "garbage": "corrupt_image",
    "extra": "kept",
    "good1": "kept",
}


@pytest.fixture()
def hostile(tmp_path: Path) -> Path:
    return hostile_tar(tmp_path / "hostile.tar", hostile_members())


def _fates(records: list[Sample | Rejection]) -> list[tuple[str, str]]:
    return [(r.key, "kept" if isinstance(r, Sample) else str(r.reason)) for r in records]


def test_every_hostile_case_ends_in_a_record_with_its_reason(hostile: Path) -> None:
    records = list(read_shard_file(str(hostile)))
    fates = _fates(records)
    assert fates.count(("rep", "duplicate_key")) == 1
    fates.remove(("rep", "duplicate_key"))
    assert dict(fates) == EXPECTED and len(fates) == len(EXPECTED)
    assert all(r.detail for r in records if isinstance(r, Rejection))


def test_every_member_is_accounted_for_exactly_once(hostile: Path) -> None:
    records = list(read_shard_file(str(hostile)))
    assert sum(r.members for r in records) == tar_member_count(hostile) == 21
    assert next(r for r in records if r.key == "extra").members == 3  # the unused .cls member too


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_long_key_is_a_sample_and_is_written_back(tmp_path: Path, fmt: int) -> None:
    path = hostile_tar(tmp_path / "long.tar", [(f"{LONG_KEY}.jpg", GOOD), (f"{LONG_KEY}.txt", b"long")], fmt)
    (sample,) = read_shard_file(str(path))
    assert isinstance(sample, Sample) and sample.key == LONG_KEY
    with ShardWriter(str(tmp_path / "out")) as writer:
        writer.write(sample)
    (back,) = iter_samples(writer.paths)
    assert (back.key, back.caption, back.image) == (LONG_KEY, "long", GOOD)


def test_non_utf8_name_is_rejected_under_a_stable_text_key(tmp_path: Path) -> None:
    path = hostile_tar(tmp_path / "n.tar", [(f"{NON_UTF8}.jpg", GOOD), (f"{NON_UTF8}.txt", b"x"), ("ok.jpg", GOOD),
                                            ("ok.txt", b"ok")])  # fmt: skip
    bad, ok = read_shard_file(str(path))
    assert isinstance(bad, Rejection) and bad.reason == RejectReason.NON_UTF8_NAME
    assert bad.key == "caf\\xe9" and bad.members == 2 and "caf\\xe9" in bad.detail
    assert isinstance(ok, Sample) and ok.key == "ok"
    # What crashed the Beam job: keys and the KeyByMeta tuple go through UTF-8 coders.
    meta = beam.coders.registry.get_coder(beam.typehints.Tuple[str, str, str, int, int])
    meta.encode((ok.key, ok.shard, ok.caption, ok.width, ok.height))
    meta.encode((bad.key, bad.shard, bad.detail, 0, 0))


def test_repeated_key_in_adjacent_members_is_a_duplicate_not_an_overwrite(tmp_path: Path) -> None:
    members = [("k.jpg", GOOD), ("k.txt", b"first"), ("k.jpg", jpeg_bytes(9)), ("k.txt", b"second")]
    first, second = read_shard_file(str(hostile_tar(tmp_path / "r.tar", members)))
    assert isinstance(first, Sample) and first.caption == "first" and first.image == GOOD
    assert isinstance(second, Rejection) and second.reason == RejectReason.DUPLICATE_KEY
    assert first.members == second.members == 2


def test_oversize_member_is_rejected_without_being_read(tmp_path: Path, monkeypatch) -> None:
    big = b"\x00" * (48 << 20)  # 48 MB of zeros: a ~50 KB gzip tar
    path = hostile_tar(tmp_path / "big.tar.gz", [("big.jpg", big), ("big.txt", b"huge"), ("ok.jpg", GOOD),
                                                 ("ok.txt", b"ok")], gzip=True)  # fmt: skip
    del big
    extracted: list[str] = []
    real = tarfile.TarFile.extractfile
    monkeypatch.setattr(
        tarfile.TarFile, "extractfile", lambda self, m: extracted.append(m.name) or real(self, m)
    )
    tracemalloc.start()
    try:
        bad, ok = read_shard_file(str(path), max_member_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(bad, Rejection) and bad.reason == RejectReason.MEMBER_TOO_LARGE and bad.members == 2
    assert "50331648 bytes" in bad.detail and "max_member_bytes=1048576" in bad.detail
    assert isinstance(ok, Sample)
    assert extracted == ["ok.jpg", "ok.txt"]  # neither member of the rejected sample was read
    assert peak < 8 << 20, peak


def test_eps_image_is_rejected_and_never_parsed(tmp_path: Path, monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append("gs") or 1 / 0)
    real_open = EpsImagePlugin.EpsImageFile._open
    monkeypatch.setattr(
        EpsImagePlugin.EpsImageFile, "_open", lambda self: calls.append("open") or real_open(self)
    )
    path = hostile_tar(tmp_path / "e.tar", [("e.jpg", EPS), ("e.txt", b"eps")])
    (rec,) = read_shard_file(str(path))
    assert isinstance(rec, Rejection) and rec.reason == RejectReason.UNSUPPORTED_IMAGE_FORMAT
    assert "JPEG, PNG, WEBP, BMP" in rec.detail
    assert calls == []


def test_long_caption_is_rejected_unread(tmp_path: Path) -> None:
    path = hostile_tar(tmp_path / "c.tar", [("c.jpg", GOOD), ("c.txt", b"a" * (1 << 20))])
    (rec,) = read_shard_file(str(path))
    assert isinstance(rec, Rejection) and rec.reason == RejectReason.CAPTION_TOO_LONG
    assert rec.detail == "caption is 1048576 bytes, over max_caption_bytes=8192"
    (small,) = read_shard_file(str(path), max_caption_bytes=2 << 20)
    assert isinstance(small, Sample)


def test_rejection_details_are_reproducible_and_hold_no_address(hostile: Path) -> None:
    def details() -> list[str]:
        return [r.detail for r in read_shard_file(str(hostile)) if isinstance(r, Rejection)]

    first, second = details(), details()
    assert first == second and len(first) == 5
    assert not [d for d in first if ADDRESS.search(d) or "object at" in d]


def test_huge_one_bit_png_is_never_a_full_size_rgb_copy(monkeypatch) -> None:
    data = png_1bit(4000)  # 16 Mpx, ~2 KB encoded; as RGB 64 MB
    converted: list[tuple[str, tuple[int, int]]] = []
    real = Image.Image.convert
    monkeypatch.setattr(Image.Image, "convert", lambda self, mode=None, *a, **k: converted.append(
        (mode, self.size)) or real(self, mode, *a, **k))  # fmt: skip
    arr = to_rgb_array(data, 64)
    assert arr.shape == (64, 64, 3) and arr.min() == 255
    assert converted and all(mode != "RGB" or max(size) <= 6 * 64 for mode, size in converted), converted
    img = decode_image(data, min_side=100)
    assert img.mode == "RGB" and 300 <= min(img.size) < 600


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_large_png_decode_peak_memory_is_bounded_by_the_native_image(tmp_path: Path) -> None:
    """In a fresh process (Linux /proc): decoding a 7990x7990 1-bit PNG for a 512 px target stays far below one RGB copy."""
    path = tmp_path / "big.png"
    path.write_bytes(png_1bit(7990))
    script = (
        "import re, sys\n"
        "from copyguard.curation.images import to_rgb_array\n"
        "def hwm():  # this process's peak RSS in KiB (ru_maxrss would include the forking parent's)\n"
        "    return int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "before = hwm()\n"
        "to_rgb_array(data, 512)\n"
        "print(hwm() - before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
    )
    grown_mb = int(out.stdout.strip()) / 1024
    # Native mode-1 decode: 64 MB, its 8-bit copy 64 MB; one full-size RGB copy alone is 255 MB.
    assert grown_mb < 160, grown_mb


def test_trainer_survives_the_hostile_shard(hostile: Path) -> None:
    spec = DataConfig(shuffle_buffer=0, caption_dropout=0)
    (batch,) = islice(iter(make_loader([str(hostile)], spec, 16, 5, 0)), 1)
    assert sorted(batch.keys) == sorted(["good0", LONG_KEY.rsplit("/", 1)[-1], "rep", "extra", "good1"])
    assert batch.skipped == {"non_utf8_name": 1, "duplicate_key": 1, "unsupported_image_format": 1, "corrupt_image": 1,
                             "caption_too_long": 1}  # fmt: skip
    # train.data's caps reach the stream: with a 16-byte caption cap the longer captions are skipped too.
    tight = DataConfig(shuffle_buffer=0, caption_dropout=0, max_caption_bytes=16)
    (batch,) = islice(iter(make_loader([str(hostile)], tight, 16, 5, 0)), 1)
    assert batch.skipped["caption_too_long"] > 1


def test_curation_job_on_the_hostile_shard_accounts_for_everything(hostile: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = run(
        ["--input", str(hostile), "--output", str(out)], test_pipeline=BeamTestPipeline(runner=FnApiRunner())
    )
    assert report["invariant_holds"] and report["inputs"] == 10
    rows = read_manifest(sorted(str(p) for p in (out / "manifest").glob("*.parquet")))
    assert {(r["key"], r["reason"]) for r in rows if r["status"] == "rejected"} == {
        ("caf\\xe9", "non_utf8_name"),
        ("rep", "duplicate_key"),
        ("eps", "unsupported_image_format"),
        ("garbage", "corrupt_image"),
        ("longcap", "caption_too_long"),
    }
    written = {r.key for r in iter_samples(str(out / "shards" / "*.tar"))}
    assert LONG_KEY in written


def test_curate_io_config_caps_reach_the_job_reader(tmp_path: Path) -> None:
    """``--set curate.io.max_caption_bytes=N`` is the cap the job's reader applies (not only the default)."""
    path = hostile_tar(
        tmp_path / "s.tar",
        [("a.jpg", GOOD), ("a.txt", b"x" * 40), ("b.jpg", GOOD), ("b.txt", b"short")],
    )
    out = tmp_path / "out"
    argv = ["--input", str(path), "--output", str(out), "--set", "curate.io.max_caption_bytes=32"]
    report = run(argv, test_pipeline=BeamTestPipeline(runner=FnApiRunner()))
    assert report["invariant_holds"]
    rows = read_manifest(sorted(str(p) for p in (out / "manifest").glob("*.parquet")))
    assert {(r["key"], r["status"], r["reason"]) for r in rows} >= {("a", "rejected", "caption_too_long")}
    assert {r["key"] for r in rows if r["status"] != "rejected"} == {"b"}
