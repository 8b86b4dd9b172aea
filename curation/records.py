"""The typed records every stage passes along: a good :class:`Sample` or a :class:`Rejection`.

Both are small frozen dataclasses, cheap to pickle, so Beam workers and DataLoader processes move them
around as they are. A rejection always carries a :class:`RejectReason`, so that every input sample ends
up in the manifest with its fate (datatrove's exclusion-writer idea).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["IMAGE_EXTENSIONS", "CAPTION_EXTENSIONS", "RejectReason", "Rejection", "Sample"]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
CAPTION_EXTENSIONS = ("txt", "caption")


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

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Sample:
    """One image-caption pair read from a shard.

    ``image`` holds the encoded bytes exactly as stored (they are re-written unchanged), ``image_ext`` the
    member extension (``jpg``, ``png``...). ``width``/``height`` come from the decoded header.
    ``metadata`` is the sample's optional ``.json`` member.
    """

    key: str
    caption: str
    image: bytes
    image_ext: str = "jpg"
    width: int = 0
    height: int = 0
    shard: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True, slots=True)
class Rejection:
    """An input that could not become a :class:`Sample`, with the reason and a human-readable detail."""

    key: str
    reason: RejectReason
    shard: str = ""
    detail: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.reason, RejectReason):
            object.__setattr__(self, "reason", RejectReason(self.reason))
