"""Decoding source photos: every format and pixel mode a catalog may hold ends as 8-bit sRGB
RGB(A), and every bad file ends as a ``PhotoError`` with the reason, never another exception.

All photos are built here, a few pixels each; 16-bit PNGs and bombs are written by hand.
"""

from __future__ import annotations

import io
import random
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile

from factory.core.photo_decode import MAX_PIXELS, decode_photo, probe_photo
from factory.core.photo_decode import PhotoError

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))


def png16(rows: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG (PIL writes none in colour): ``rows`` is HxWxC uint16."""
    height, width = rows.shape[:2]
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def with_png_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a PNG) whose IHDR declares another size, its CRC made right again."""
    patched = bytearray(data)
    patched[16:24] = struct.pack(">II", width, height)
    patched[29:33] = struct.pack(">I", zlib.crc32(bytes(patched[12:29])))
    return bytes(patched)


def reason(call) -> str:
    with pytest.raises(PhotoError) as caught:
        call()
    return caught.value.reason


def noise(size: int, seed: int = 1) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# -- good photos ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, options, tolerance", [
    ("PNG", {}, 0), ("WEBP", {"lossless": True}, 0), ("JPEG", {"quality": 95}, 4),
    ("GIF", {}, 0), ("TIFF", {}, 0), ("BMP", {}, 0),
])
def test_formats_decode_to_rgb(fmt, options, tolerance):
    image = Image.new("RGB", (6, 4), (200, 30, 60))
    image.paste(BLUE, (3, 0, 6, 4))
    data = encode(image, fmt, **options)
    assert probe_photo(data) == (6, 4, fmt)
    pixels = decode_photo(data)
    assert pixels.shape == (4, 6, 3) and pixels.dtype == np.uint8
    assert pixels.flags.writeable and pixels.flags.c_contiguous
    assert np.abs(pixels[1, 0].astype(int) - (200, 30, 60)).max() <= tolerance
    assert np.abs(pixels[1, 5].astype(int) - BLUE).max() <= tolerance + 2


def test_png_alpha_is_kept_and_an_opaque_alpha_dropped():
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 90, [[0, 128, 255], [255, 255, 7]]
    pixels = decode_photo(encode(Image.fromarray(rgba), "PNG"))
    assert pixels.shape == (2, 3, 4) and (pixels == rgba).all()
    rgba[..., 3] = 255
    opaque = decode_photo(encode(Image.fromarray(rgba), "PNG"))
    assert opaque.shape == (2, 3, 3) and opaque.flags.c_contiguous and (opaque == 90 * (
        np.arange(3) == 0)).all()


def test_webp_with_alpha():
    image = Image.new("RGBA", (4, 4), (10, 200, 30, 40))
    pixels = decode_photo(encode(image, "WEBP", lossless=True))
    assert pixels.shape == (4, 4, 4) and tuple(pixels[0, 0]) == (10, 200, 30, 40)


def test_cmyk_jpeg_and_tiff_become_rgb():
    cmyk = Image.new("CMYK", (8, 8), (255, 0, 0, 0))  # cyan
    cmyk.paste((0, 255, 0, 0), (4, 0, 8, 8))  # magenta
    jpeg = decode_photo(encode(cmyk, "JPEG", quality=95))
    assert jpeg.shape == (8, 8, 3)
    assert np.abs(jpeg[4, 1].astype(int) - (0, 255, 255)).max() <= 6
    tiff = decode_photo(encode(cmyk, "TIFF"))
    assert tuple(tiff[4, 1]) == (0, 255, 255) and tuple(tiff[4, 6]) == (255, 0, 255)


def test_16_bit_gray_png_is_scaled_with_rounding():
    values = np.array([[0, 257, 1000, 32896, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    pixels = decode_photo(data)
    assert pixels.shape == (1, 5, 3)
    assert pixels[0, :, 0].tolist() == [0, 1, 4, 128, 255]  # round(v * 255 / 65535)
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_32_bit_integer_gray_holding_16_bit_values_is_scaled():
    values = np.array([[0, 1000, 65535, 70000, -5]], dtype=np.int32)
    pixels = decode_photo(encode(Image.fromarray(values, mode="I"), "TIFF"))
    assert pixels[0, :, 1].tolist() == [0, 4, 255, 255, 0]


@pytest.mark.parametrize("color_type, channels", [(2, 3), (6, 4)])
def test_16_bit_rgb_and_rgba_png_are_scaled(color_type, channels):
    rows = np.array([[[65535, 32896, 0, 65535], [1000, 256, 65535, 32896]]], dtype=np.uint16)
    pixels = decode_photo(png16(rows[..., :channels], color_type))
    expected = (rows[..., :channels].astype(np.int64) * 255 + 32767) // 65535
    assert pixels.shape == (1, 2, channels)
    assert np.abs(pixels.astype(np.int64) - expected).max() <= 1  # PIL keeps the high byte


def test_palette_with_transparency_becomes_rgba():
    image = Image.new("P", (3, 1))
    image.putpalette([9, 9, 9, *RED, *GREEN])
    for x, index in enumerate([0, 1, 2]):
        image.putpixel((x, 0), index)
    pixels = decode_photo(encode(image, "PNG", transparency=0))
    assert pixels.shape == (1, 3, 4)
    assert pixels[0, :, 3].tolist() == [0, 255, 255]
    assert tuple(pixels[0, 1, :3]) == RED and tuple(pixels[0, 2, :3]) == GREEN
    plain = decode_photo(encode(image, "PNG"))
    assert plain.shape == (1, 3, 3) and tuple(plain[0, 0]) == (9, 9, 9)


@pytest.mark.parametrize("mode, value, expected", [
    ("LA", (100, 50), (100, 100, 100, 50)), ("L", 77, (77, 77, 77)), ("1", 1, WHITE),
])
def test_gray_modes(mode, value, expected):
    pixels = decode_photo(encode(Image.new(mode, (2, 2), value), "PNG"))
    assert tuple(pixels[1, 1]) == expected


@pytest.mark.parametrize("orientation, corner", [
    (1, (0, 0)), (3, (-1, -1)), (6, (0, -1)), (8, (-1, 0)),
])
def test_exif_orientation_is_applied(orientation, corner):
    stored = Image.new("RGB", (48, 24), WHITE)
    stored.paste(RED, (0, 0, 8, 8))  # top-left as stored
    exif = Image.Exif()
    exif[0x0112] = orientation
    pixels = decode_photo(encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
    assert pixels.shape == ((24, 48, 3) if orientation in (1, 3) else (48, 24, 3))
    row, column = (3 if corner[0] == 0 else -4), (3 if corner[1] == 0 else -4)
    assert np.abs(pixels[row, column].astype(int) - RED).max() < 30
    assert np.abs(pixels[row, -1 - column if column >= 0 else 3].astype(int) - WHITE).max() < 30


def _srgb_with_red_and_green_swapped() -> bytes:
    """An RGB profile like sRGB but whose red primary is sRGB's green and vice versa."""
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    count = struct.unpack(">I", icc[128:132])[0]
    where = {bytes(icc[132 + 12 * i:136 + 12 * i]): 132 + 12 * i for i in range(count)}
    red, green = where[b"rXYZ"], where[b"gXYZ"]
    icc[red + 4:red + 12], icc[green + 4:green + 12] = icc[green + 4:green + 12], icc[red + 4:red + 12]
    return bytes(icc)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_embedded_icc_profile_is_converted_to_srgb(fmt):
    image = Image.new("RGB", (4, 2), RED)
    image.paste(BLUE, (2, 0, 4, 2))
    options = {"quality": 95} if fmt == "JPEG" else {}
    tagged = decode_photo(encode(image, fmt, icc_profile=_srgb_with_red_and_green_swapped(),
                                 **options))
    assert np.abs(tagged[0, 0].astype(int) - GREEN).max() <= 8  # its red is sRGB's green
    assert np.abs(tagged[0, 3].astype(int) - BLUE).max() <= 8
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    same = decode_photo(encode(image, fmt, icc_profile=srgb, **options))
    assert np.abs(same[0, 0].astype(int) - RED).max() <= 8


def test_icc_profile_keeps_alpha_and_a_broken_profile_is_ignored():
    image = Image.new("RGBA", (2, 2), (255, 0, 0, 99))
    pixels = decode_photo(encode(image, "PNG", icc_profile=_srgb_with_red_and_green_swapped()))
    assert pixels[0, 0, 3] == 99 and pixels[0, 0, 1] > 240 and pixels[0, 0, 0] < 15
    broken = decode_photo(encode(Image.new("RGB", (2, 2), RED), "PNG", icc_profile=b"x" * 200))
    assert tuple(broken[0, 0]) == RED


# -- bad photos ----------------------------------------------------------------------------

def test_zero_bytes_and_text_named_png():
    assert reason(lambda: probe_photo(b"")) == reason(lambda: decode_photo(b"")) == "0 bytes"
    text = b"<html>Not Found</html>\n"
    assert reason(lambda: decode_photo(text)).startswith("not an image")
    assert reason(lambda: probe_photo(text)).startswith("not an image")


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    def refuse(self):
        raise AssertionError("pixels were decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.parametrize("width, height", [(60000, 60000), (9000, 8000)])
def test_decompression_bomb_is_refused_from_the_header(no_pixel_decoding, width, height):
    bomb = with_png_size(encode(Image.new("L", (1, 1)), "PNG"), width, height)
    expected = f"decompression bomb: {width}x{height} pixels over the 64 MP cap"
    assert reason(lambda: probe_photo(bomb)) == expected
    assert reason(lambda: decode_photo(bomb)) == expected


def test_jpeg_bomb_and_pil_global_cap_neither_relied_on_nor_changed(no_pixel_decoding,
                                                                    monkeypatch):
    jpeg = bytearray(encode(Image.new("RGB", (8, 8)), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 65000, 65000)
    before = Image.MAX_IMAGE_PIXELS
    assert reason(lambda: decode_photo(bytes(jpeg))).startswith(
        "decompression bomb: 65000x65000 pixels")
    assert Image.MAX_IMAGE_PIXELS == before
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # someone else turned PIL's off
    assert reason(lambda: probe_photo(bytes(jpeg))).startswith("decompression bomb")


def test_max_pixels_is_an_argument():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    assert probe_photo(data, max_pixels=10_000) == (100, 100, "PNG")
    assert reason(lambda: decode_photo(data, max_pixels=9_999)) == (
        "decompression bomb: 100x100 pixels over the 0.009999 MP cap")
    assert MAX_PIXELS == 64_000_000


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_truncated_photo_is_a_photo_error(fmt):
    data = encode(noise(64), fmt)
    cut = data[: int(len(data) * 0.6)]
    if fmt != "WEBP":  # PIL's WebP reader checks the whole file when it opens it
        assert probe_photo(cut)[:2] == (64, 64)
    message = reason(lambda: decode_photo(cut))
    assert message.startswith((f"corrupt or truncated {fmt} image: ", "not a readable image"))


def test_corrupt_png_data_is_a_photo_error():
    data = bytearray(encode(noise(32), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 40:idat + 60] = bytes(20)
    assert reason(lambda: decode_photo(bytes(data))).startswith("corrupt or truncated PNG")


def test_unsupported_pixel_mode_is_named():
    data = encode(Image.new("F", (2, 2), 0.5), "TIFF")
    assert reason(lambda: decode_photo(data)) == "unsupported pixel mode F"


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about the damage it meets
def test_mutated_photos_only_ever_raise_photo_error():
    """A seeded fuzz: random byte flips, cuts and splices of real photos."""
    seeds = [encode(noise(24, seed), fmt) for seed, fmt in enumerate(["PNG", "JPEG", "GIF",
                                                                      "WEBP", "TIFF", "BMP"])]
    exif = Image.Exif()
    exif[0x0112] = 6
    seeds += [encode(noise(16).convert("CMYK"), "JPEG"), encode(noise(16), "JPEG", exif=exif),
              encode(noise(16).convert("P"), "PNG", transparency=3),
              encode(noise(16).convert("LA"), "PNG"), png16(np.zeros((4, 4, 4), np.uint16), 6),
              encode(noise(16), "PNG", icc_profile=_srgb_with_red_and_green_swapped())]
    rng = random.Random(7)
    decoded = refused = 0
    for _ in range(2000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            if not data:
                break
            at = rng.randrange(len(data))
            if rng.random() < 0.8:
                data[at] = rng.randrange(256)
            else:
                data = data[:at] + data[at + rng.randint(1, 64):]
        try:
            pixels = decode_photo(bytes(data))
        except PhotoError as error:
            assert error.reason
            refused += 1
        else:
            assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] in (3, 4)
            decoded += 1
    assert decoded > 200 and refused > 200
