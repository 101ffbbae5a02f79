"""Per-image host ops for the streaming input path: encoded bytes in, uint8 HWC out.

These run in grain worker processes, one encoded image at a time; everything
per-pixel and cheap (flip, normalisation, colour jitter) is left to the device.
The speed comes from PIL's JPEG ``draft()``: libjpeg can scale the image down
by 1/2, 1/4 or 1/8 while decoding (in the DCT domain), so a crop that will be
resized to 224 pixels anyway need not be decoded at full resolution.

Every function returns a C-contiguous uint8 (H, W, C) array, C = ``channels``
(1: PIL mode 'L', 3: 'RGB'); it may be a read-only view of PIL's buffer.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

# libjpeg's DCT-domain scale denominators that PIL's draft() can ask for.
_DRAFT_SCALES = (8, 4, 2)


def _mode(channels: int) -> str:
    if channels == 1:
        return 'L'
    if channels == 3:
        return 'RGB'
    raise ValueError(f'channels must be 1 or 3, got {channels}')


def _to_array(image: Image.Image) -> np.ndarray:
    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    # No copy: the result may be a read-only view of PIL's buffer, which
    # batching (np.stack) copies anyway.
    return np.ascontiguousarray(arr)


def _draft_scale(box_w: float, box_h: float, need_w: float, need_h: float) -> int:
    """Largest DCT scale denominator that keeps a box_w x box_h region >= need."""
    for s in _DRAFT_SCALES:
        if box_w >= need_w * s and box_h >= need_h * s:
            return s
    return 1


def _open_reduced(data: bytes, mode: str, scale: int, draft: bool) -> tuple[Image.Image, float]:
    """Opens ``data`` decoded at 1/``scale`` where the format allows it.

    Returns the decoded image (in ``mode``) and the factor that maps original
    pixel coordinates to the decoded image's coordinates.
    """
    image = Image.open(io.BytesIO(data))
    width = image.width
    factor = 1.0
    if draft:
        # draft() picks the largest scale with (width // s) >= requested width;
        # asking for width // scale makes that exactly ``scale``.  It also lets
        # libjpeg emit grayscale directly when mode is 'L'.  Non-JPEG formats
        # return None and decode at full size.
        size = (max(1, width // scale), max(1, image.height // scale)) if scale > 1 else None
        result = image.draft(mode, size)
        if result is not None:
            factor = result[1][2] / width
    if image.mode != mode:
        image = image.convert(mode)
    return image, factor


def decode(data: bytes, channels: int = 3) -> np.ndarray:
    """Decodes an encoded image (any format PIL reads) to uint8 (H, W, channels)."""
    image = Image.open(io.BytesIO(data))
    mode = _mode(channels)
    if image.mode != mode:
        image = image.convert(mode)
    return _to_array(image)


def random_resized_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """Samples (top, left, h, w) with torchvision's ``RandomResizedCrop.get_params``.

    Same algorithm and the same order of draws (area scale, log-uniform aspect
    ratio, then top and left), taken from a numpy Generator instead of torch.
    """
    area = height * width
    # float32 like torchvision's torch.log(torch.tensor(ratio)), so that equal
    # uniform draws give equal boxes.
    log_ratio = np.log(np.asarray(ratio, dtype=np.float32))
    log_lo, log_hi = float(log_ratio[0]), float(log_ratio[1])
    for _ in range(10):
        target_area = area * float(rng.uniform(scale[0], scale[1]))
        aspect_ratio = math.exp(float(rng.uniform(log_lo, log_hi)))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w

    # Fallback: the whole image, cut to the nearest allowed aspect ratio.
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    data: bytes,
    rng: np.random.Generator,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    channels: int = 3,
    draft: bool = True,
) -> np.ndarray:
    """Decodes and random-resized-crops one image to uint8 (size, size, channels).

    The box is sampled from the original size (read from the header; PIL opens
    lazily), the JPEG is decoded reduced as far as the box keeps >= ``size``
    pixels per side (``draft=False`` turns that off), and the box is resized
    bilinearly (antialiased, as torchvision's PIL path) in one ``resize`` call.
    Unlike torchvision's crop-then-resize, the outermost output pixels blend in
    the source pixels just outside the box rather than clamping at its edge.
    """
    mode = _mode(channels)
    with Image.open(io.BytesIO(data)) as probe:
        width, height = probe.size
    top, left, h, w = random_resized_crop_box(rng, height, width, scale, ratio)
    image, f = _open_reduced(data, mode, _draft_scale(w, h, size, size), draft)
    box = (left * f, top * f, (left + w) * f, (top + h) * f)
    return _to_array(image.resize((size, size), Image.BILINEAR, box=box))


def resize_center_crop(data: bytes, resize: int, crop: int, channels: int = 3, draft: bool = True) -> np.ndarray:
    """Eval transform: shorter side to ``resize`` (bilinear), centre ``crop`` x ``crop``.

    Sizes and offsets follow torchvision's ``Resize(resize)`` + ``CenterCrop(crop)``;
    only the cropped region is resampled (one ``resize`` with a box), from a
    JPEG decoded reduced while its shorter side stays >= ``resize``.
    """
    mode = _mode(channels)
    with Image.open(io.BytesIO(data)) as probe:
        width, height = probe.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(resize * long / short)
    new_w, new_h = (resize, new_long) if width <= height else (new_long, resize)
    if crop > min(new_w, new_h):
        raise ValueError(f'crop {crop} exceeds the resized image {new_w}x{new_h}')
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    image, f = _open_reduced(data, mode, _draft_scale(width, height, new_w, new_h), draft)
    # Map the crop in resized coordinates back to the (possibly reduced) source.
    sx, sy = width * f / new_w, height * f / new_h
    box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
    return _to_array(image.resize((crop, crop), Image.BILINEAR, box=box))
