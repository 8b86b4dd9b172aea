"""The typed records every stage passes along: a good :class:`Sample` or a :class:`Rejection`.

Both are small frozen dataclasses, cheap to pickle, so Beam workers and DataLoader processes move them
around as they are. A rejection always carries a :class:`RejectReason`, so that every input sample ends
up in the manifest with its fate (datatrove's exclusion-writer idea).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "IMAGE_EXTENSIONS",
    "CAPTION_EXTENSIONS",
    "MAX_DETAIL_CHARS",
    "RejectReason",
    "Rejection",
    "Sample",
]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
CAPTION_EXTENSIONS = ("txt", "caption")
# A rejection's detail is cut to this many characters (it lands in every manifest and report).
MAX_DETAIL_CHARS = 400
# `` at 0x7f...`` in an object repr: a memory address, different on every run.
_ADDRESS = re.compile(r"\s+at\s+0x[0-9a-fA-F]+")


class RejectReason(str, enum.Enum):
    """Why an input sample could not be used. The values are what the manifest's ``reason`` column holds."""

    CORRUPT_IMAGE = "corrupt_image"
    IMAGE_TOO_LARGE = "image_too_large"
    MISSING_IMAGE = "missing_image"
    MISSING_CAPTION = "missing_caption"
    NON_UTF8_CAPTION = "non_utf8_caption"
    EMPTY_CAPTION = "empty_caption"
    EMPTY_FILE = "empty_file"
    TRUNCATED_TAR = "truncated_tar"
    CORRUPT_TAR = "corrupt_tar"
    EMPTY_SHARD = "empty_shard"
    UNSAFE_MEMBER_NAME = "unsafe_member_name"
    DUPLICATE_KEY = "duplicate_key"
    BAD_METADATA = "bad_metadata"
    MEMBER_TOO_LARGE = "member_too_large"
    CAPTION_TOO_LONG = "caption_too_long"
    UNSUPPORTED_IMAGE_FORMAT = "unsupported_image_format"
    NON_UTF8_NAME = "non_utf8_name"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Sample:
    """One image-caption pair read from a shard.

    ``image`` holds the encoded bytes exactly as stored (they are re-written unchanged), ``image_ext`` the
    member extension (``jpg``, ``png``...). ``width``/``height`` come from the decoded header.
    ``metadata`` is the sample's optional ``.json`` member. ``members`` counts the tar members this sample
    was read from (0 when it was not read from a shard), so that members in = members accounted.
    """

    key: str
    caption: str
    image: bytes
    image_ext: str = "jpg"
    width: int = 0
    height: int = 0
    shard: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    members: int = 0

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True, slots=True)
class Rejection:
    """An input that could not become a :class:`Sample`, with the reason and a human-readable detail.

    ``members`` counts the tar members the rejection accounts for (0 for a whole-shard problem or a
    rejection made after reading). The detail is made reproducible: object addresses (`` at 0x...``) are
    removed and it is cut to :data:`MAX_DETAIL_CHARS`, so the same bad input gives byte-identical details.
    """

    key: str
    reason: RejectReason
    shard: str = ""
    detail: str = ""
    members: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.reason, RejectReason):
            object.__setattr__(self, "reason", RejectReason(self.reason))
        detail = _ADDRESS.sub("", str(self.detail))
        if len(detail) > MAX_DETAIL_CHARS:
            detail = detail[: MAX_DETAIL_CHARS - 3] + "..."
        object.__setattr__(self, "detail", detail)
