"""Unit tests for stages.colour (hermetic: numpy only, synthetic images)."""

from __future__ import annotations

import numpy as np
import pytest

from stages.colour import (
    delta_e_2000,
    lab_to_srgb,
    mean_delta_e_to_palette,
    parse_hex_colour,
    parse_palette,
    srgb_to_lab,
    transfer_to_palette,
)

# Sharma, Wu & Dalal (2005), "The CIEDE2000 color-difference formula: implementation
# notes, supplementary test data, and mathematical observations", Table 1 (34 pairs).
SHARMA_PAIRS = [
    ((50.0000, 2.6772, -79.7751), (50.0000, 0.0000, -82.7485), 2.0425),
    ((50.0000, 3.1571, -77.2803), (50.0000, 0.0000, -82.7485), 2.8615),
    ((50.0000, 2.8361, -74.0200), (50.0000, 0.0000, -82.7485), 3.4412),
    ((50.0000, -1.3802, -84.2814), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, -1.1848, -84.8006), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, -0.9009, -85.5211), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, 0.0000, 0.0000), (50.0000, -1.0000, 2.0000), 2.3669),
    ((50.0000, -1.0000, 2.0000), (50.0000, 0.0000, 0.0000), 2.3669),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0009), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0010), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0011), 7.2195),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0012), 7.2195),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0009, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0010, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0011, -2.4900), 4.7461),
    ((50.0000, 2.5000, 0.0000), (50.0000, 0.0000, -2.5000), 4.3065),
    ((50.0000, 2.5000, 0.0000), (73.0000, 25.0000, -18.0000), 27.1492),
    ((50.0000, 2.5000, 0.0000), (61.0000, -5.0000, 29.0000), 22.8977),
    ((50.0000, 2.5000, 0.0000), (56.0000, -27.0000, -3.0000), 31.9030),
    ((50.0000, 2.5000, 0.0000), (58.0000, 24.0000, 15.0000), 19.4535),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.1736, 0.5854), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.2972, 0.0000), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 1.8634, 0.5757), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.2592, 0.3350), 1.0000),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((63.0109, -31.0961, -5.8663), (62.8187, -29.7946, -4.0864), 1.2630),
    ((61.2901, 3.7196, -5.3901), (61.4292, 2.2480, -4.9620), 1.8731),
    ((35.0831, -44.1164, 3.7933), (35.0232, -40.0716, 1.5901), 1.8645),
    ((22.7233, 20.0904, -46.6940), (23.0331, 14.9730, -42.5619), 2.0373),
    ((36.4612, 47.8580, 18.3852), (36.2715, 50.5065, 21.2231), 1.4146),
    ((90.8027, -2.0831, 1.4410), (91.1528, -1.6435, 0.0447), 1.4441),
    ((90.9257, -0.5406, -0.9208), (88.6381, -0.8985, -0.7239), 1.5381),
    ((6.7747, -0.2908, -2.4247), (5.8714, -0.0985, -2.2286), 0.6377),
    ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
]

WARM_PALETTE = ["#8B4513", "#D2691E", "#F4A460", "#FF8C00"]


def _green_gradient(h: int = 64, w: int = 96) -> np.ndarray:
    """Greenish gradient image, far from a warm brown/orange palette."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[..., 0] = (20 + 60 * x / (w - 1)).astype(np.uint8)
    img[..., 1] = (120 + 120 * y / (h - 1)).astype(np.uint8)
    img[..., 2] = (40 + 80 * (x + y) / (w + h - 2)).astype(np.uint8)
    return img


# --- parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#fff", (255, 255, 255)),
        ("#FFF", (255, 255, 255)),
        ("#A1B2C3", (0xA1, 0xB2, 0xC3)),
        ("#a1b2c3", (0xA1, 0xB2, 0xC3)),
        ("#1a2", (0x11, 0xAA, 0x22)),
        ("#000000", (0, 0, 0)),
    ],
)
def test_parse_hex_colour_accepts(text: str, expected: tuple[int, int, int]) -> None:
    assert parse_hex_colour(text) == expected


@pytest.mark.parametrize("bad", ["#GGG", "fff", "#12345", "", "#1234567", "##fff", "#ff ff"])
def test_parse_hex_colour_rejects(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_hex_colour(bad)
    assert repr(bad) in str(info.value) or f"'{bad}'" in str(info.value)


def test_parse_hex_colour_error_message() -> None:
    with pytest.raises(ValueError, match=r"'#GGG'.*#RGB or #RRGGBB"):
        parse_hex_colour("#GGG")


def test_parse_palette_string() -> None:
    assert parse_palette("#ff0000, #00ff00 #0000ff") == (
        (255, 0, 0),
        (0, 255, 0),
        (0, 0, 255),
    )


def test_parse_palette_list() -> None:
    assert parse_palette(["#fff", "#000000"]) == ((255, 255, 255), (0, 0, 0))


@pytest.mark.parametrize("empty", ["", "  ,  ", []])
def test_parse_palette_empty(empty: str | list[str]) -> None:
    with pytest.raises(ValueError):
        parse_palette(empty)


def test_parse_palette_bad_entry_named() -> None:
    with pytest.raises(ValueError, match="#zzz"):
        parse_palette("#ff0000, #zzz")


# --- Lab conversion -------------------------------------------------------------------


def test_srgb_to_lab_known_values() -> None:
    lab = srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0]], dtype=np.uint8))
    assert lab.dtype == np.float64
    np.testing.assert_allclose(lab[0], [100.0, 0.0, 0.0], atol=1e-3)
    np.testing.assert_allclose(lab[1], [0.0, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.05)


def test_srgb_to_lab_float_matches_uint8() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, size=(50, 3), dtype=np.uint8)
    np.testing.assert_allclose(srgb_to_lab(rgb), srgb_to_lab(rgb / 255.0), atol=1e-9)


def test_srgb_lab_round_trip() -> None:
    rgb = np.random.default_rng(1234).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    back = lab_to_srgb(srgb_to_lab(rgb))
    assert back.dtype == np.uint8
    assert back.shape == rgb.shape
    assert np.abs(back.astype(int) - rgb.astype(int)).max() <= 1


def test_lab_to_srgb_clips_out_of_gamut() -> None:
    out = lab_to_srgb(np.array([[150.0, 0.0, 0.0], [-10.0, 0.0, 0.0], [50.0, 200.0, 0.0]]))
    assert out.dtype == np.uint8
    assert tuple(out[0]) == (255, 255, 255)
    assert tuple(out[1]) == (0, 0, 0)


# --- CIEDE2000 ------------------------------------------------------------------------


@pytest.mark.parametrize(("lab1", "lab2", "expected"), SHARMA_PAIRS)
def test_delta_e_2000_sharma_pairs(lab1, lab2, expected) -> None:
    assert float(delta_e_2000(np.array(lab1), np.array(lab2))) == pytest.approx(
        expected, abs=1e-4
    )
    # Symmetric.
    assert float(delta_e_2000(np.array(lab2), np.array(lab1))) == pytest.approx(
        expected, abs=1e-4
    )


def test_delta_e_2000_vectorised_broadcasting() -> None:
    lab1 = np.array([p[0] for p in SHARMA_PAIRS])
    lab2 = np.array([p[1] for p in SHARMA_PAIRS])
    expected = np.array([p[2] for p in SHARMA_PAIRS])
    np.testing.assert_allclose(delta_e_2000(lab1, lab2), expected, atol=1e-4)
    grid = delta_e_2000(lab1[:, None, :], lab2[None, :, :])
    assert grid.shape == (len(SHARMA_PAIRS), len(SHARMA_PAIRS))
    np.testing.assert_allclose(np.diagonal(grid), expected, atol=1e-4)
    np.testing.assert_allclose(delta_e_2000(lab1, lab1), 0.0, atol=1e-12)


# --- palette metric ---------------------------------------------------------------


def test_mean_delta_e_palette_colours_is_zero() -> None:
    palette = parse_palette(WARM_PALETTE)
    idx = np.random.default_rng(7).integers(0, len(palette), size=(40, 30))
    img = np.array(palette, dtype=np.uint8)[idx]
    assert mean_delta_e_to_palette(img, WARM_PALETTE) == pytest.approx(0.0, abs=1e-6)


def test_mean_delta_e_respects_mask_and_subsamples() -> None:
    img = np.zeros((600, 600, 3), dtype=np.uint8)  # 360k pixels > subsample cap
    img[:, :300] = (255, 0, 0)
    mask = np.zeros(img.shape[:2], dtype=bool)
    mask[:, :300] = True
    assert mean_delta_e_to_palette(img, "#f00", mask=mask) == pytest.approx(0.0, abs=1e-6)
    assert mean_delta_e_to_palette(img, "#f00") > 10.0
    assert mean_delta_e_to_palette(img, "#f00") == mean_delta_e_to_palette(img, "#f00")


# --- transfer ---------------------------------------------------------------------


def test_transfer_reduces_delta_e() -> None:
    img = _green_gradient()
    before = mean_delta_e_to_palette(img, WARM_PALETTE)
    out = transfer_to_palette(img, WARM_PALETTE)
    after = mean_delta_e_to_palette(out, WARM_PALETTE)
    assert after <= 0.75 * before, (before, after)


def test_transfer_single_colour_palette_keeps_structure() -> None:
    img = _green_gradient()
    out = transfer_to_palette(img, "#D2691E")
    assert mean_delta_e_to_palette(out, "#D2691E") < mean_delta_e_to_palette(img, "#D2691E")
    # A one-colour palette must not collapse the image to a flat colour.
    assert len(np.unique(out.reshape(-1, 3), axis=0)) > 10


def test_transfer_output_dtype_and_shape() -> None:
    img = _green_gradient(37, 53)
    out = transfer_to_palette(img, WARM_PALETTE, strength=0.5)
    assert out.dtype == np.uint8
    assert out.shape == img.shape
    assert out is not img


def test_transfer_strength_zero_is_identity() -> None:
    img = _green_gradient()
    out = transfer_to_palette(img, WARM_PALETTE, strength=0.0)
    assert out.tobytes() == img.tobytes()


def test_transfer_strength_is_monotone() -> None:
    img = _green_gradient()
    de = [
        mean_delta_e_to_palette(transfer_to_palette(img, WARM_PALETTE, strength=s), WARM_PALETTE)
        for s in (0.0, 0.5, 1.0)
    ]
    assert de[0] > de[1] > de[2]


def test_transfer_mask_leaves_masked_out_pixels_unchanged() -> None:
    img = _green_gradient()
    mask = np.zeros(img.shape[:2], dtype=bool)
    mask[10:50, 20:70] = True
    out = transfer_to_palette(img, WARM_PALETTE, mask=mask)
    np.testing.assert_array_equal(out[~mask], img[~mask])
    assert not np.array_equal(out[mask], img[mask])
    assert mean_delta_e_to_palette(out, WARM_PALETTE, mask=mask) < mean_delta_e_to_palette(
        img, WARM_PALETTE, mask=mask
    )


def test_transfer_is_deterministic() -> None:
    img = _green_gradient()
    a = transfer_to_palette(img, WARM_PALETTE, strength=0.8)
    b = transfer_to_palette(img.copy(), list(WARM_PALETTE), strength=0.8)
    assert a.tobytes() == b.tobytes()


def test_transfer_does_not_modify_input() -> None:
    img = _green_gradient()
    snapshot = img.copy()
    transfer_to_palette(img, WARM_PALETTE)
    np.testing.assert_array_equal(img, snapshot)


@pytest.mark.parametrize("strength", [-0.1, 1.5])
def test_transfer_rejects_bad_strength(strength: float) -> None:
    with pytest.raises(ValueError):
        transfer_to_palette(_green_gradient(), WARM_PALETTE, strength=strength)
