"""Host-side per-image ops: decode, RandomResizedCrop (torchvision's sampler), eval crop."""

import importlib
import io
import types

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from jaxres.data import host_ops as ht


def _encode(arr: np.ndarray, fmt: str = 'JPEG', **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Low-frequency colour pattern: survives JPEG and DCT downscaling nearly intact."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    chans = []
    for _ in range(3):
        fy, fx, ph = rng.uniform(1, 3), rng.uniform(1, 3), rng.uniform(0, 6)
        chans.append(127 + 100 * np.sin(2 * np.pi * (fy * y / height + fx * x / width) + ph))
    return np.stack(chans, -1).clip(0, 255).astype(np.uint8)


def _torchvision_transforms():
    """torchvision.transforms (torch_ports' import, which copes with a CUDA wheel)."""
    pytest.importorskip('torch')
    if importlib.util.find_spec('torchvision') is None:
        pytest.skip('torchvision is not installed (the torch extra does not need it)')
    from jaxres.tools import torch_ports  # pylint: disable=g-import-not-at-top
    return torch_ports.torchvision_transforms()


@pytest.fixture
def draft_sizes(monkeypatch):
    """The image sizes PIL's JPEG draft() reduced to, call by call."""
    sizes = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, 'draft', spy)
    return sizes


def _check_array(a: np.ndarray, shape: tuple) -> None:
    assert a.shape == shape
    assert a.dtype == np.uint8
    assert a.flags.c_contiguous


@pytest.mark.parametrize('fmt', ['JPEG', 'PNG'])
def test_decode_equals_pil(fmt):
    data = _encode(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8), fmt)
    out = ht.decode(data)
    _check_array(out, (37, 53, 3))
    np.testing.assert_array_equal(out, np.asarray(Image.open(io.BytesIO(data)).convert('RGB')))
    gray = ht.decode(data, channels=1)
    _check_array(gray, (37, 53, 1))
    np.testing.assert_array_equal(gray[..., 0], np.asarray(Image.open(io.BytesIO(data)).convert('L')))


def test_decode_grayscale_jpeg_to_rgb():
    data = _encode(np.full((8, 9), 77, np.uint8))
    out = ht.decode(data, channels=3)
    _check_array(out, (8, 9, 3))
    assert np.all(out == out[..., :1])


class _Script:
    """Replays the same unit-interval draws as numpy-style and torch-style calls."""

    def __init__(self, units):
        self.units = list(units)

    def _next(self):
        return self.units.pop(0)

    # numpy Generator interface used by random_resized_crop_box
    def uniform(self, lo, hi):
        return lo + (hi - lo) * self._next()

    def integers(self, lo, hi):
        return lo + int(self._next() * (hi - lo))


def _torch_params(monkeypatch, script, height, width, scale, ratio):
    """torchvision's own get_params, with torch's RNG calls answered from ``script``."""
    torch = pytest.importorskip('torch')
    tvt = _torchvision_transforms().transforms

    class _Empty:
        def uniform_(self, lo, hi):
            return torch.tensor([script.uniform(float(lo), float(hi))], dtype=torch.float64)

    shim = types.SimpleNamespace(
        log=torch.log, exp=torch.exp, tensor=torch.tensor,
        empty=lambda *a, **k: _Empty(),
        randint=lambda lo, hi, size: torch.tensor([script.integers(lo, hi)]))
    monkeypatch.setattr(tvt, 'torch', shim)
    img = torch.zeros(3, height, width)
    return tvt.RandomResizedCrop.get_params(img, list(scale), list(ratio))


def test_box_matches_torchvision_draw_for_draw(monkeypatch):
    rng = np.random.default_rng(1)
    cases = 0
    for _ in range(300):
        height, width = (int(v) for v in rng.integers(20, 700, 2))
        scale = (0.08, 1.0) if rng.random() < 0.7 else (0.5, 1.5)
        ratio = (3 / 4, 4 / 3) if rng.random() < 0.7 else (0.2, 5.0)
        units = rng.random(40)
        ours = ht.random_resized_crop_box(_Script(units), height, width, scale, ratio)
        theirs = _torch_params(monkeypatch, _Script(units), height, width, scale, ratio)
        assert ours == tuple(int(v) for v in theirs), (height, width, scale, ratio)
        cases += 1
    assert cases == 300


@pytest.mark.parametrize('height,width,expected', [
    (100, 400, (0, 133, 100, 133)),   # too wide: h = height, w = round(h * 4/3)
    (400, 100, (133, 0, 133, 100)),   # too tall: w = width, h = round(w * 4/3)
    (100, 110, (0, 0, 100, 110)),     # within the ratio range: whole image
])
def test_box_fallback(monkeypatch, height, width, expected):
    # scale > 1 makes every attempt too large, so both fall back.
    ours = ht.random_resized_crop_box(np.random.default_rng(0), height, width, (2.0, 3.0))
    assert ours == expected
    theirs = _torch_params(monkeypatch, _Script(np.full(20, 0.5)), height, width, (2.0, 3.0), (3 / 4, 4 / 3))
    assert tuple(int(v) for v in theirs) == expected


def test_box_bounds_and_statistics_match_torchvision():
    torch = pytest.importorskip('torch')
    get_params = _torchvision_transforms().RandomResizedCrop.get_params
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    height, width = 375, 500
    img = torch.zeros(1, height, width)

    def stats(boxes):
        b = np.array(boxes, dtype=float)
        top, left, h, w = b.T
        return np.stack([h * w / (height * width), np.log(w / h), (top + h / 2) / height, (left + w / 2) / width])

    ours = stats([ht.random_resized_crop_box(rng, height, width) for _ in range(4000)])
    theirs = stats([get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(4000)])
    area, log_ratio, cy, cx = ours
    top, left, h, w = np.array([ht.random_resized_crop_box(rng, height, width) for _ in range(500)]).T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    # Rounding to whole pixels moves the bounds by at most a pixel's worth.
    assert area.min() >= 0.08 - 0.01 and area.max() <= 1.0
    assert np.exp(log_ratio).min() >= 3 / 4 - 0.02 and np.exp(log_ratio).max() <= 4 / 3 + 0.02
    # Same distribution as torchvision's (means and spreads within sampling error).
    np.testing.assert_allclose(ours.mean(1), theirs.mean(1), atol=0.015)
    np.testing.assert_allclose(ours.std(1), theirs.std(1), atol=0.015)


def test_random_resized_crop_whole_image_equals_pil_resize():
    # scale=ratio=1 on a square image: the box is the whole image; size 40 > 64/2
    # rules out any reduction.  PNG: PIL's path, bitwise.
    arr = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _encode(arr, 'PNG')
    out = ht.random_resized_crop(data, np.random.default_rng(0), 40, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    _check_array(out, (40, 40, 3))
    expected = np.asarray(Image.fromarray(arr).resize((40, 40), Image.BILINEAR))
    np.testing.assert_array_equal(out, expected)


def test_random_resized_crop_box_region_equals_crop_then_resize():
    # Same box as torchvision's crop + resize, on a PNG (no draft).  Only the
    # outermost output pixels differ: the box resize blends in the source pixels
    # just outside the box where crop-then-resize clamps at the crop's edge.
    arr = _smooth_image(120, 160)
    data = _encode(arr, 'PNG')
    out = ht.random_resized_crop(data, np.random.default_rng(5), 32)
    top, left, h, w = ht.random_resized_crop_box(np.random.default_rng(5), 120, 160)
    expected = np.asarray(Image.fromarray(arr).crop((left, top, left + w, top + h)).resize((32, 32), Image.BILINEAR))
    np.testing.assert_array_equal(out[1:-1, 1:-1], expected[1:-1, 1:-1])
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 8


@pytest.fixture
def jpeg_calls(monkeypatch):
    """The DCT scale denominators of the JPEGs of each batched TF call, call by call."""
    calls = []
    original = ht._jpeg_crops

    def spy(channels, size):
        crops = original(channels, size)

        def call(data, scale_indices, windows):
            calls.append([ht._DCT_SCALES[k] for k in scale_indices])
            return crops(data, scale_indices, windows)
        return call

    monkeypatch.setattr(ht, '_jpeg_crops', spy)
    return calls


def test_random_resized_crop_jpeg_equals_torchvision_crop_then_resize(jpeg_calls):
    # A JPEG decodes only its box (TF's decode_and_crop_jpeg, libjpeg as PIL);
    # torchvision decodes it whole, crops, and resizes with PIL's antialiased
    # bilinear.  At full scale (no DCT reduction) and a shrink under 2x the two
    # resamplers agree to within rounding on a natural (smooth) image.
    arr = _smooth_image(180, 240)
    data = _encode(arr, quality=95)
    decoded = Image.open(io.BytesIO(data)).convert('RGB')
    for seed in range(6):
        out = ht.random_resized_crop(data, np.random.default_rng(seed), 96, draft=False)
        _check_array(out, (96, 96, 3))
        top, left, h, w = ht.random_resized_crop_box(np.random.default_rng(seed), 180, 240)
        ref = np.asarray(decoded.crop((left, top, left + w, top + h)).resize((96, 96), Image.BILINEAR))
        diff = np.abs(out.astype(int) - ref.astype(int))
        # The kernels' edge handling differs only in the outermost pixels.
        assert diff[1:-1, 1:-1].max() <= 3 and diff.mean() < 0.5, (seed, diff.max(), diff.mean())
    assert jpeg_calls == [[1]] * 6


def test_random_resized_crops_batch_equals_one_by_one(jpeg_calls):
    # JPEGs at several DCT scales and a PNG in one batch: each row equals that
    # image cropped alone with the same generator; one TF call for the batch.
    images = [_encode(_smooth_image(480, 640, seed=1), quality=90),
              _encode(_smooth_image(90, 120, seed=2), quality=90),
              _encode(_smooth_image(100, 100, seed=3), 'PNG'),
              _encode(_smooth_image(300, 200, seed=4), quality=90)] * 3
    rngs = lambda: [np.random.default_rng([7, i]) for i in range(len(images))]  # noqa: E731
    batch = ht.random_resized_crops(images, rngs(), 40)
    _check_array(batch, (len(images), 40, 40, 3))
    assert len(jpeg_calls) == 1 and len(jpeg_calls[0]) == 9 and len(set(jpeg_calls[0])) >= 2
    for i, (data, rng) in enumerate(zip(images, rngs())):
        np.testing.assert_array_equal(batch[i], ht.random_resized_crop(data, rng, 40))
    assert len(jpeg_calls) == 10  # one call per JPEG alone, none for the PNG


def test_random_resized_crop_reduces_and_stays_close(jpeg_calls):
    arr = _smooth_image(480, 640)
    data = _encode(arr, quality=95)
    kw = dict(size=56, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3))
    reduced = ht.random_resized_crop(data, np.random.default_rng(3), **kw)
    # 640x480 box, 56 output: 480/8 = 60 >= 56, so libjpeg decodes at 1/8.
    assert jpeg_calls == [[8]]
    _check_array(reduced, (56, 56, 3))
    decoded = Image.open(io.BytesIO(data)).convert('RGB')
    ref = np.asarray(decoded.resize((56, 56), Image.BILINEAR))  # torchvision's, antialiased
    assert np.abs(reduced.astype(int) - ref.astype(int)).mean() < 2.0

    # Random boxes at the default scale: smaller boxes, smaller reductions.  Each
    # is torchvision's crop + antialiased resize of the same box with its edges
    # rounded to whole pixels of the reduced decode, to within resampling.
    for seed in range(20):
        out = ht.random_resized_crop(data, np.random.default_rng(seed), 64)
        top, left, h, w = ht.random_resized_crop_box(np.random.default_rng(seed), 480, 640)
        f = ht._draft_scale(w, h, 64, 64)
        edges = [round(v / f) * f for v in (left, top, left + w, top + h)]
        ref = np.asarray(decoded.crop(edges).resize((64, 64), Image.BILINEAR))
        assert np.abs(out.astype(int) - ref.astype(int)).mean() < 1.5, seed
    assert {s for (s,) in jpeg_calls[1:]} == {2, 4}


def test_random_resized_crop_grayscale():
    data = _encode(_smooth_image(100, 120))
    out = ht.random_resized_crop(data, np.random.default_rng(0), 24, channels=1)
    _check_array(out, (24, 24, 1))


def test_resize_center_crop_known_pattern():
    # 300 (h) x 400 (w): shorter side 300 -> 256 gives 256x341; the centre 224x224
    # is rows 16..240, cols 58..282 of the resized image, i.e. rows 18.75..281.25,
    # cols 68..330.5 of the original.
    arr = np.zeros((300, 400, 3), np.uint8)
    arr[30:270, 80:320] = (200, 40, 90)  # inside the crop, with a margin
    arr[:, :50] = 255                      # outside the crop: left strip
    data = _encode(arr, quality=95)
    out = ht.resize_center_crop(data, 256, 224)
    _check_array(out, (224, 224, 3))
    # Border of the crop is black (original rows 18..30 / cols 68..80); the centre is the patch.
    centre = out[30:194, 30:194].astype(int)
    assert np.abs(centre - (200, 40, 90)).max() < 12
    assert out[:5].max() < 30 and out[:, :5].max() < 30
    assert np.abs(out.astype(int) - 255).min() > 0  # the white strip is cut away entirely

    # Equals torchvision's Resize(256) + CenterCrop(224) on PIL to within rounding.
    tvf = _torchvision_transforms().functional
    ref = np.asarray(tvf.center_crop(tvf.resize(Image.open(io.BytesIO(data)).convert('RGB'), 256), 224))
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


def test_resize_center_crop_draft_and_grayscale(draft_sizes):
    data = _encode(_smooth_image(600, 800), quality=95)
    sizes = draft_sizes
    a = ht.resize_center_crop(data, 256, 224)
    assert sizes == [(400, 300)]  # 600 / 2 = 300 >= 256; 600 / 4 < 256
    b = ht.resize_center_crop(data, 256, 224, draft=False)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0
    g = ht.resize_center_crop(data, 256, 224, channels=1)
    _check_array(g, (224, 224, 1))
    # libjpeg's Y channel vs PIL's convert('L') of RGB: same luma weights.
    luma = np.asarray(Image.fromarray(b).convert('L')).astype(int)
    assert np.abs(g[..., 0].astype(int) - luma).mean() < 2.0


def test_bad_channels():
    with pytest.raises(ValueError):
        ht.decode(_encode(np.zeros((4, 4, 3), np.uint8)), channels=2)
    with pytest.raises(ValueError):
        ht.random_resized_crop(_encode(np.zeros((4, 4, 3), np.uint8)), np.random.default_rng(0), 2, channels=4)
