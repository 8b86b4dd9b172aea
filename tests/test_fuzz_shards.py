"""Fuzzing the shard reader (issue 16): generated tar member sequences, names and payloads.

Every generated shard must end in samples and rejections-with-reason, never a traceback and never a lost
member: the members the records account for equal the members ``tarfile`` lists on its own. A cut-short
copy of each shard must not raise either. The default run is small, seeded and derandomized (a few
seconds); ``COPYGUARD_FUZZ_EXAMPLES=5000 make fuzz`` runs a longer one.
"""

from __future__ import annotations

import io
import os
import re
import tarfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from copyguard.curation.records import Rejection, RejectReason, Sample
from copyguard.curation.shards import read_shard
from tests.helpers import jpeg_bytes

EXAMPLES = int(os.environ.get("COPYGUARD_FUZZ_EXAMPLES", "60"))
LIMITS = {
    "max_pixels": 64 * 64,
    "max_member_bytes": 4096,
    "max_caption_bytes": 256,
    "max_metadata_bytes": 128,
}
ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


def _png(side: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (side, side)).save(buf, format="PNG")
    return buf.getvalue()


GOOD = jpeg_bytes(3)
PAYLOADS = [
    GOOD,
    GOOD[: len(GOOD) // 2],
    _png(8, "1"),
    _png(8, "P"),
    _png(80),  # over max_pixels
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n",
    b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
    b"",
    b"a caption",
    b"caf\xe9 \xff",
    b" \n\t ",
    b"x" * 300,  # over max_caption_bytes (and max_metadata_bytes)
    b'{"a": 1}',
    b"[1, 2]",
    b'{"s": "\\udcff"}',
    b"{" * 64,
    b"\x00" * 5000,  # over max_member_bytes
]
STEMS = ["a", "b", "dir/c", "caf\udce9", "é", "../up", "/abs", "k" * 120, "d/" + "e" * 150, "x.y"]
EXTS = ["jpg", "JPG", "png", "webp", "txt", "caption", "json", "cls", ""]

member = st.tuples(
    st.sampled_from(STEMS),
    st.sampled_from(EXTS),
    st.sampled_from(PAYLOADS),
    st.sampled_from(["file", "file", "file", "file", "symlink", "dir"]),
)


def _build(members: list[tuple[str, str, bytes, str]], fmt: int, compress: str) -> bytes:
    buf = io.BytesIO()
    mode = f"w:{compress}" if compress else "w"
    with tarfile.open(fileobj=buf, mode=mode, format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        for stem, ext, data, kind in members:
            info = tarfile.TarInfo(f"{stem}.{ext}" if ext else stem)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "../../etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _listed(data: bytes) -> int:
    with tarfile.open(
        fileobj=io.BytesIO(data), mode="r:*", encoding="utf-8", errors="surrogateescape"
    ) as tar:
        return sum(1 for m in tar.getmembers() if not m.isdir())


def _read(data: bytes) -> list[Sample | Rejection]:
    records = list(read_shard(io.BytesIO(data), "fuzz.tar", **LIMITS))
    for r in records:
        assert isinstance(r, Sample | Rejection), r
        r.key.encode("utf-8")  # a text key for Beam coders, Parquet and JSON
        if isinstance(r, Rejection):
            assert isinstance(r.reason, RejectReason) and r.detail and not ADDRESS.search(r.detail)
            r.detail.encode("utf-8")
    return records


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    members=st.lists(member, max_size=12),
    fmt=st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
    compress=st.sampled_from(["", "", "gz", "bz2", "xz"]),
    cut=st.floats(0.0, 1.0),
)
def test_fuzzed_shards_account_for_every_member(members, fmt, compress, cut) -> None:
    data = _build(members, fmt, compress)
    records = _read(data)
    assert sum(r.members for r in records) == _listed(data)
    samples = [r.key for r in records if isinstance(r, Sample)]
    assert len(samples) == len(set(samples))  # a key is kept at most once per shard
    assert [r.detail for r in _read(data) if isinstance(r, Rejection)] == [
        r.detail for r in records if isinstance(r, Rejection)
    ]
    _read(data[: int(len(data) * cut)])  # cut short anywhere: records with reasons, no exception
