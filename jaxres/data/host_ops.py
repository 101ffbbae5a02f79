"""Host image ops for the streaming input path: encoded bytes in, uint8 pixels out.

These run in grain worker processes; everything per-pixel and cheap (flip,
normalisation, colour jitter) is left to the device.  Training's
RandomResizedCrop takes a whole batch at once and decodes only what it keeps:
JPEGs go through TensorFlow's ``decode_and_crop_jpeg`` (libjpeg skips the
blocks outside the box) at the largest DCT-domain scale (1/2, 1/4, 1/8) that
keeps the box >= the output size, then a bilinear resize, one compiled TF call
per batch, as the Flax ImageNet example and big_vision decode.
The DCT scaling is libjpeg's low-pass, so the bilinear resize that follows
shrinks by less than 2x (but for boxes over 16x the output) and needs no
antialiasing.  Other formats, and the eval
transform, use PIL (antialiased, with JPEG ``draft()``).

Every function returns C-contiguous uint8 (H, W, C) arrays (a batch: (N, H, W,
C)), C = ``channels`` (1: PIL mode 'L', 3: 'RGB'); a single image may be a
read-only view of PIL's buffer.
"""

from __future__ import annotations

import functools
import io
import math
import multiprocessing
import os
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

# libjpeg's DCT-domain scale denominators that PIL's draft() and TF's
# decode_jpeg(ratio=) can ask for.
_DCT_SCALES = (1, 2, 4, 8)


# The file suffixes of images PIL decodes that image folders may hold.


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
    return max(s for s in _DCT_SCALES if s == 1 or (box_w >= need_w * s and box_h >= need_h * s))


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


def is_jpeg(data: bytes) -> bool:
    """Whether ``data`` starts with a JPEG's SOI marker."""
    return data[:3] == b'\xff\xd8\xff'


def _tensorflow() -> Any:
    """TensorFlow, imported on first use (grain's spawned workers import it there).

    In a worker process TF gets one thread: the workers are the parallelism,
    as a torch ``DataLoader``'s workers each run one thread.
    """
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if multiprocessing.parent_process() is not None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # the runtime already started in this process
            pass
    return tf


@functools.lru_cache(maxsize=None)
def _jpeg_crops(channels: int, size: int) -> Callable[..., Any]:
    """A compiled TF function: N JPEGs, their DCT scale indices k (decoded at
    1/``_DCT_SCALES[k]``) and N windows (top, left, h, w) in the pixels of the
    decoded images -> the windows resized to uint8 (N, size, size, channels),
    bilinear.

    One function per (channels, size) and process, traced once (the decode's
    ``ratio`` is an attribute of the op: one branch per scale); one call per
    batch keeps TF's per-call cost off the per-image cost.  INTEGER_ACCURATE is
    libjpeg's (and PIL's) default IDCT: the decoded pixels equal PIL's.
    """
    tf = _tensorflow()

    def crop_resize(args):
        data, scale_index, window = args
        decoders = [functools.partial(tf.io.decode_and_crop_jpeg, data, window, channels=channels,
                                      ratio=scale, dct_method='INTEGER_ACCURATE')
                    for scale in _DCT_SCALES]
        image = tf.image.resize(tf.switch_case(scale_index, decoders), (size, size), 'bilinear')
        return tf.cast(tf.round(image), tf.uint8)

    @tf.function(input_signature=(tf.TensorSpec([None], tf.string),
                                  tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([None, 4], tf.int32)))
    def crops(data, scale_indices, windows):
        return tf.map_fn(crop_resize, (data, scale_indices, windows),
                         fn_output_signature=tf.TensorSpec([size, size, channels], tf.uint8))

    return crops


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

    return central_crop_box(height, width, ratio)


def central_crop_box(height: int, width: int, ratio: tuple[float, float]
                     ) -> tuple[int, int, int, int]:
    """RandomResizedCrop's fallback (top, left, h, w): the whole image, cut to the
    nearest allowed aspect ratio, centred (torchvision's rule; also the jit op's)."""
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crops(
    datas: Sequence[bytes],
    rngs: Sequence[np.random.Generator],
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    channels: int = 3,
    draft: bool = True,
) -> np.ndarray:
    """Decodes and random-resized-crops a batch to uint8 (N, size, size, channels).

    Image i's box comes from ``rngs[i]`` and its original size (read from the
    header; PIL opens lazily), with torchvision's sampler.  Each box is decoded
    reduced as far as it keeps >= ``size`` pixels per side (``draft=False``
    turns that off).  JPEGs: only the box is decoded (its window rounded to
    whole pixels of the reduced image: its edges move by at most half a pixel
    of that image, under 1/448 of the box), then resized bilinearly; other formats:
    PIL resizes the box (antialiased; its outermost output pixels blend in the
    source pixels just outside the box rather than clamping at its edge).
    """
    mode = _mode(channels)
    out = np.empty((len(datas), size, size, channels), np.uint8)
    jpegs = []  # (i, scale index, window)
    for i, (data, rng) in enumerate(zip(datas, rngs)):
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
        top, left, h, w = random_resized_crop_box(rng, height, width, scale, ratio)
        reduce = _draft_scale(w, h, size, size) if draft else 1
        if is_jpeg(data):
            # Edges rounded in the reduced image (ceil(side / reduce) pixels): inside it.
            y0, x0 = round(top / reduce), round(left / reduce)
            y1, x1 = round((top + h) / reduce), round((left + w) / reduce)
            jpegs.append((i, _DCT_SCALES.index(reduce), [y0, x0, y1 - y0, x1 - x0]))
            continue
        image, f = _open_reduced(data, mode, reduce, draft)
        box = (left * f, top * f, (left + w) * f, (top + h) * f)
        out[i] = _to_array(image.resize((size, size), Image.BILINEAR, box=box))
    if jpegs:
        rows, scales, windows = zip(*jpegs)
        encoded = np.array([datas[i] for i in rows], dtype=object)
        out[list(rows)] = _jpeg_crops(channels, size)(
            encoded, np.array(scales, np.int32), np.array(windows, np.int32)).numpy()
    return out


def random_resized_crop(data: bytes, rng: np.random.Generator, size: int, **kwargs: Any
                        ) -> np.ndarray:
    """One image's ``random_resized_crops`` (same keyword arguments): uint8 (size, size, C)."""
    return random_resized_crops([data], [rng], size, **kwargs)[0]


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
