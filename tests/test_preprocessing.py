"""The torch eval transform equals lesionlite.preprocessing.preprocess bit for bit; decode guards;
training augmentation keeps the shape and the single normalisation."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from distill.transforms import TrainTransform, eval_transform, train_transform
from lesionlite.errors import LesionliteError
from lesionlite.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageDecodeError,
    PreprocessConfig,
    load_image_bytes,
    normalize,
    normalize_formula,
    preprocess,
)

CFGS = [
    PreprocessConfig(input_size=32),
    PreprocessConfig(input_size=24, resize_size=28, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    PreprocessConfig(input_size=40, interpolation="bicubic"),
]


def _rgb(w: int = 50, h: int = 37, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _images() -> dict[str, Image.Image]:
    rgb = _rgb()
    out = {
        "RGB": Image.fromarray(rgb, "RGB"),
        "L": Image.fromarray(rgb[..., 0], "L"),
        "RGBA": Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA"),
        "P": Image.fromarray(rgb, "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=32),
        "I;16": Image.frombytes("I;16", (rgb.shape[1], rgb.shape[0]),
                                (rgb[..., 1].astype("<u2") * 257).tobytes()),
    }
    # EXIF-rotated JPEG (orientation 6 = rotate 90° CW on display), decoded through the byte loader.
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb, "RGB").save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    out["JPEG-EXIF6"] = Image.open(io.BytesIO(buf.getvalue()))
    out["JPEG-EXIF6-bytes"] = load_image_bytes(buf.getvalue())
    return out


@pytest.mark.parametrize("cfg", CFGS, ids=["squash", "resize-crop", "bicubic"])
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "I;16", "JPEG-EXIF6", "JPEG-EXIF6-bytes"])
def test_eval_transform_equals_preprocess_bit_for_bit(cfg: PreprocessConfig, mode: str) -> None:
    img = _images()[mode]
    t = eval_transform(cfg)(img)
    ref = torch.from_numpy(preprocess(img, cfg))
    assert t.dtype == torch.float32 and t.shape == (3, cfg.input_size, cfg.input_size)
    assert torch.equal(t, ref)
    # "none" augmentation is the eval pipeline too
    assert torch.equal(train_transform(cfg, "none")(img), ref)


def test_exif_orientation_is_honoured() -> None:
    img = _images()["JPEG-EXIF6-bytes"]
    assert img.size == (37, 50)  # the 50x37 JPEG displays rotated


def test_corrupt_and_empty_bytes_raise_decode_error() -> None:
    with pytest.raises(ImageDecodeError, match="empty"):
        load_image_bytes(b"")
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        load_image_bytes(b"\x89PNG\r\n\x1a\n definitely not a png")
    buf = io.BytesIO()
    Image.fromarray(_rgb(), "RGB").save(buf, format="JPEG")
    with pytest.raises(ImageDecodeError):
        load_image_bytes(buf.getvalue()[:60])  # truncated


def test_decompression_bomb_guard() -> None:
    buf = io.BytesIO()
    Image.new("L", (4000, 3000)).save(buf, format="PNG")  # 12 Mpx, compresses to a few KB
    with pytest.raises(ImageDecodeError, match="too large"):
        load_image_bytes(buf.getvalue(), max_pixels=10_000_000)
    assert load_image_bytes(buf.getvalue(), max_pixels=20_000_000).size == (4000, 3000)


@pytest.mark.parametrize("side", [20000, 60000])
def test_pixel_limit_is_ours_past_pillows_own_guard(side: int) -> None:
    """Pillow's Image.open refuses over 2 x Image.MAX_IMAGE_PIXELS in its own words; the caller's
    max_pixels, read from the header before decoding, is the limit the error names."""
    from test_serve_support import png_bomb

    assert side * side > 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageDecodeError) as err:
        load_image_bytes(png_bomb(side, side), max_pixels=40_000_000)
    assert str(err.value) == f"image too large: {side}x{side} = {side * side} pixels exceeds the limit of 40000000"


@pytest.mark.parametrize("strength", ["default", "light"])
def test_train_transform_shape_and_normalisation(strength: str) -> None:
    torch.manual_seed(0)
    cfg = PreprocessConfig(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    img = Image.fromarray(_rgb(60, 45), "RGB")
    tr = train_transform(cfg, strength)
    assert isinstance(tr, TrainTransform)
    a, b = tr(img), tr(img)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert not torch.equal(a, b)  # random
    assert a.min() >= -1.0 and a.max() <= 1.0  # values come from normalize() on uint8
    # the values are exactly normalize(uint8) for some uint8 image
    u8 = np.rint((a.numpy().transpose(1, 2, 0) * 0.5 + 0.5) * 255).astype(np.uint8)
    assert np.array_equal(normalize(u8, cfg).transpose(2, 0, 1), a.numpy())
    # a constant image stays constant under geometric + mild colour augmentation (no stray tint)
    flat = Image.new("RGB", (40, 30), (128, 128, 128))
    out = tr(flat)
    assert float(out.std()) < 0.2
    with pytest.raises(Exception, match="strength"):
        train_transform(cfg, "extreme")  # type: ignore[arg-type]


@pytest.mark.parametrize("mean,std", [(IMAGENET_MEAN, IMAGENET_STD), ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                                      ((0.1, 0.9, 0.33), (0.07, 1.3, 0.49))])
def test_normalize_lookup_equals_the_formula_bit_for_bit(mean, std):
    """The per-level lookup table gives exactly (x/255 − mean)/std in float32, every level and layout."""
    cfg = PreprocessConfig(input_size=16, mean=mean, std=std)
    every_level = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    noise = np.random.default_rng(1).integers(0, 256, (37, 23, 3), dtype=np.uint8)
    for arr in (every_level, noise, np.ascontiguousarray(noise[::2, ::-1])):
        ref = normalize_formula(arr, cfg)
        hwc = normalize(arr, cfg)
        chw = normalize(arr, cfg, "NCHW")
        assert hwc.dtype == chw.dtype == np.float32
        assert hwc.tobytes() == ref.tobytes()
        assert chw.tobytes() == np.ascontiguousarray(ref.transpose(2, 0, 1)).tobytes()


def test_normalize_refuses_what_is_not_uint8_rgb():
    cfg = PreprocessConfig(input_size=4)
    with pytest.raises(LesionliteError, match="uint8 HxWx3"):
        normalize(np.zeros((4, 4, 3), np.float32), cfg)
    with pytest.raises(LesionliteError, match="uint8 HxWx3"):
        normalize(np.zeros((4, 4), np.uint8), cfg)
    with pytest.raises(LesionliteError, match="layout"):
        normalize(np.zeros((4, 4, 3), np.uint8), cfg, "CHW")  # type: ignore[arg-type]


def test_random_illuminant_divides_out_the_light_and_puts_a_random_one() -> None:
    """Colour-constancy augmentation (data.illuminant_augment): Shades of Gray estimates the light, which is
    divided out; the random illuminant keeps the old one's level; off (spread 0) changes nothing, bit for bit."""
    from distill.transforms import RandomIlluminant

    torch.manual_seed(0)
    tinted = np.zeros((30, 40, 3), np.uint8)
    tinted[...] = (200, 150, 100)  # a grey card under a warm light
    neutral = RandomIlluminant(spread=1e-12, p=1.0)(tinted)
    assert np.ptp(neutral.reshape(-1, 3).mean(0)) <= 1  # the light divided out: grey again
    assert abs(float(neutral.mean()) - 150) <= 1  # at the image's own level
    relit = RandomIlluminant(spread=0.5, p=1.0)
    for _ in range(20):
        g = relit.gains(tinted)
        assert g is not None
        light = g * np.array([200, 150, 100]) / 150  # the new light, relative to the neutral grey
        assert abs(float(light.mean()) - 1) < 1e-6  # at the old light's level
        assert np.all(light <= np.exp(1.0) + 1e-9) and np.all(light >= np.exp(-1.0) - 1e-9)
    assert RandomIlluminant(spread=0.5, p=0.0)(tinted) is tinted  # p = 0: never applied
    with pytest.raises(Exception, match="spread"):
        RandomIlluminant(spread=-0.1)

    cfg = PreprocessConfig(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    img = Image.fromarray(_rgb(60, 45), "RGB")
    torch.manual_seed(1)
    off = train_transform(cfg, "default", illuminant=0.0)(img)
    torch.manual_seed(1)
    assert torch.equal(off, train_transform(cfg, "default")(img))  # off: the default augmentation exactly
    on = train_transform(cfg, "default", illuminant=0.3)
    assert on.rotation_safe().illuminant is not None and on.rotation_safe().illuminant.spread == 0.3
    torch.manual_seed(1)
    relit_img = on(img)
    gains = RandomIlluminant.gains
    # the same random draws, the re-lighting's gains forced to 1: only the colour differs
    RandomIlluminant.gains = lambda self, arr: None if gains(self, arr) is None else np.ones(3)  # type: ignore[method-assign]
    try:
        torch.manual_seed(1)
        unlit = on(img)
    finally:
        RandomIlluminant.gains = gains  # type: ignore[method-assign]
    assert not torch.equal(relit_img, unlit)
    with pytest.raises(Exception, match="illuminant_augment"):
        train_transform(cfg, "none", illuminant=0.3)
