"""source: the row's own product photo, as the first image of its chain.

The photo is fetched before the run decides its work (``factory.run.sources``): its content hash is
part of every asset key, so a changed photo renders again and an unchanged one does not. The
fetch stores the photo's bytes once in the output store, content-addressed
(``sources/<sha256>``), and hands each row the stored object's URI (``source_uri``). This stage
reads those bytes and decodes them defensively (``factory.core.photo_decode``: decompression-bomb
cap, EXIF orientation, ICC and CMYK to sRGB, 16-bit and palette to 8-bit, alpha kept) into the
row's ``image``. A photo that does not decode is that row's failure; its batch-mates go on.

A row without a photo whose spec says ``missing: text`` starts from an empty transparent canvas:
a segment stage keeps it empty and a scene stage then generates the whole picture from the
prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Sequence

import numpy as np
from pydantic import Field

from stages.base import Stage, StageParams

if TYPE_CHECKING:
    from factory.store.photo_fetch import FetchPolicy
    from factory.store.s3 import S3Options

#: The stored photo's URI (a local path or ``s3://``), set by ``factory.run.sources``.
SOURCE_URI = "source_uri"


class PhotoSourceParams(StageParams):
    """Where a row's photo is and how it may be fetched.

    Attributes:
        column: the manifest field holding the photo's reference (``image_url``: Shopify's
            ``Image Src`` / ``Variant Image``, Merchant Center's ``image_link``): a path
            relative to the manifest, ``s3://bucket/key`` (the job's S3 settings) or
            ``http(s)://``.
        missing: a row without a photo is rejected with the reason (``reject``), or rendered
            from its prompt alone (``text``).
        allow_hosts: hosts photos may come from (``cdn.shopify.com``, ``*.example.com``);
            empty: any public host.
        allow_private: hosts allowed to resolve to loopback, private or link-local addresses
            (refused otherwise, before any connection: metadata endpoints are the classic
            target of a hostile catalog).
        max_mb: largest photo fetched.
        max_megapixels: largest photo decoded (the decompression-bomb cap).
        max_side: photos larger than this (pixels, longer side) are scaled down on decode:
            the chain's working size, not the archive's.
        timeout_s: a whole fetch, redirects and retries included.
        connect_timeout_s / read_timeout_s: per connection and per read.
        max_redirects: redirects followed (each hop checked like the first URL).
        retries: retries of a failed connection, read, 429 or 5xx, with backoff (urllib3's
            ``Retry``; botocore's retry config for ``s3://``).
        concurrency: requests in flight per fetch task.
        canvas: side of the empty canvas a ``missing: text`` row starts from.
    """

    #: How photos are fetched never changes what they are (their hash is in the key).
    key_neutral: ClassVar[frozenset[str]] = frozenset({
        "column", "missing", "allow_hosts", "allow_private", "max_mb", "max_megapixels",
        "timeout_s", "connect_timeout_s", "read_timeout_s", "max_redirects", "retries",
        "concurrency"})

    column: str = Field("image_url", min_length=1)
    missing: Literal["reject", "text"] = "reject"
    allow_hosts: tuple[str, ...] = ()
    allow_private: tuple[str, ...] = ()
    max_mb: float = Field(50.0, gt=0, le=4096)
    max_megapixels: float = Field(64.0, gt=0, le=1024)
    max_side: int = Field(2048, ge=64, le=16384)
    timeout_s: float = Field(60.0, gt=0, le=3600)
    connect_timeout_s: float = Field(5.0, gt=0, le=300)
    read_timeout_s: float = Field(20.0, gt=0, le=600)
    max_redirects: int = Field(3, ge=0, le=20)
    retries: int = Field(3, ge=0, le=20)
    concurrency: int = Field(16, ge=1, le=256)
    canvas: int = Field(512, ge=8, le=8192)

    def policy(self) -> FetchPolicy:
        """The fetch policy these params describe."""
        from factory.store.photo_fetch import FetchPolicy

        return FetchPolicy(allow_hosts=self.allow_hosts, allow_private=self.allow_private,
                           max_bytes=int(self.max_mb * 2**20),
                           connect_timeout_s=self.connect_timeout_s,
                           read_timeout_s=self.read_timeout_s, total_timeout_s=self.timeout_s,
                           max_redirects=self.max_redirects, retries=self.retries,
                           concurrency=self.concurrency)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1_000_000)


class PhotoSource(Stage):
    """Decodes each row's stored photo into its ``image``."""

    image_columns: ClassVar[tuple[str, ...]] = ("image",)

    def _predict(self, rows: dict[str, Any]) -> dict[str, Sequence[Any]]:
        side = self.params.canvas
        out = []
        for uri in rows[SOURCE_URI]:
            if not uri:  # a row without a photo, rendered from its prompt (``missing: text``)
                out.append(np.zeros((side, side, 4), dtype=np.uint8))
                continue
            out.append(self._decode(read_stored(str(uri), self.plan.s3)))
        return {"image": out}

    def _decode(self, data: bytes) -> np.ndarray:
        from factory.core.photo_decode import decode_photo

        image = decode_photo(data, max_pixels=self.params.max_pixels)
        longest = max(image.shape[:2])
        if longest <= self.params.max_side:
            return image
        from PIL import Image

        scale = self.params.max_side / longest
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        return np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))


def read_stored(uri: str, s3_options: S3Options | None) -> bytes:
    """The bytes of a stored photo: a local path or an ``s3://`` object."""
    from factory.store import s3

    if not s3.is_s3(uri):
        return Path(uri).read_bytes()
    bucket, key = s3.split_uri(uri)
    client = s3.client(s3_options or s3.S3Options())
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:  # noqa: BLE001 - ClientError: a store fault, named
        raise s3.explain(exc, uri, "read the stored photo") from exc
