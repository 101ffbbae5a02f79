"""Device-resident input pipeline: shuffle, augment and batch inside jitted code.

The whole training set lives on every device.  On CPU (``backend.packed_pixels``)
it is stored one word per pixel (its channels
packed into the bytes of a uint32 for RGB) and padded left and right by the
crop's padding: the random crop is then a gather of whole rows of pixel words,
a third of the elements of a per-example slice of a padded uint8 copy and
without its per-byte bounds checks, and the unpacking, flip and normalisation
that follow compile to one vectorised loop (CIFAR-10: 256 MB so stored, against
150 MB as uint8 arrays; ``benchmarks/RESULTS.md`` has the measured speed-up).
On GPUs and TPUs it is stored as plain (N, H, W, C) uint8 images and each
example is cropped from a padded copy; the batches are the same.
Each epoch's order is a permutation drawn on the device from (seed, epoch); the
train step gathers its global batch from it, and because that batch is sharded
over the ``data`` mesh axis, every device gathers and augments only its own
slice.  Every example's augmentation key is derived from (seed, epoch, position
in the epoch), so a run's batches do not depend on the number of devices or
hosts, and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxres import datasets, sharding

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DeviceData:
    """Arrays on the device(s): the training set (replicated) and eval batches.

    ``train_pixels`` holds the training images in one of two layouts: when
    ``packed``, (N, H, W + 2 * train_padding) pixel words (``pack_pixels``: a
    pixel's ``channels`` uint8 values in one unsigned int), the columns padded by
    ``train_padding`` in ``padding_mode``; else (N, H, W, C) uint8 images.
    ``eval_images`` is (num_batches, batch, H, W, C) uint8, sharded over ``data``
    on the batch axis; ``eval_mask`` marks the padding added to fill the last batch.
    """

    train_pixels: Array
    train_labels: Array
    eval_images: Array
    eval_labels: Array
    eval_mask: Array
    channels: int = dataclasses.field(default=3, metadata=dict(static=True))
    train_padding: int = dataclasses.field(default=0, metadata=dict(static=True))
    padding_mode: str = dataclasses.field(default='constant', metadata=dict(static=True))
    packed: bool = dataclasses.field(default=True, metadata=dict(static=True))


class AugmentOp(NamedTuple):
    """A registered augmentation op.

    ``apply(images, keys, augmentation, flips) -> images`` with one key per
    example (``flips``: airbench's alternating flips, or None); ``enabled``
    says whether ``augmentation``'s settings turn it on; ``whole_pixels`` ops
    only move whole pixels, so they also run on packed pixel words (n, H, W, 1).
    """

    apply: Callable[..., Array]
    enabled: Callable[['Augmentation'], bool]
    whole_pixels: bool = False


# name -> op, in the order ``augment`` applies them when ``data.augment_order`` is
# empty (registration order: ``register_op``).
AUGMENT_OPS: dict[str, AugmentOp] = {}


def register_op(name: str, enabled: Callable[['Augmentation'], bool],
                whole_pixels: bool = False) -> Callable[[Callable], Callable]:
    """Decorator: registers ``apply`` as the augmentation op ``name``."""

    def add(apply: Callable) -> Callable:
        if name in AUGMENT_OPS:
            raise ValueError(f'augmentation op {name!r} is registered twice.')
        AUGMENT_OPS[name] = AugmentOp(apply, enabled, whole_pixels)
        return apply

    return add


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Static augmentation settings (hashable: closed over by jitted functions).

    Every field defaults to "off"; see ``configs/default.py`` (``config.data``)
    for what each does.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0
    padding_mode: str = 'constant'
    hflip: bool = False
    flip_mode: str = 'random'
    image_size: int = 0
    vflip: bool = False
    rotation: float = 0.0
    width_shift: float = 0.0
    height_shift: float = 0.0
    interpolation: str = 'bilinear'
    fill: str = 'constant'
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    random_resized_crop: bool = False
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    standardize: str = 'channel'
    order: tuple[str, ...] = ()
    cutout: int = 0
    mixup: float = 0.0
    cutmix: float = 0.0

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> 'Augmentation':
        return cls.from_config_data(config.data)

    @classmethod
    def from_config_data(cls, data: ml_collections.ConfigDict) -> 'Augmentation':
        """From ``config.data``."""
        return cls(mean=tuple(data.mean), std=tuple(data.std), crop_padding=data.crop_padding,
                   padding_mode=data.padding_mode, hflip=data.hflip,
                   flip_mode=data.get('flip_mode', 'random'), image_size=data.image_size,
                   vflip=data.vflip, rotation=data.rotation, width_shift=data.width_shift,
                   height_shift=data.height_shift, interpolation=data.interpolation,
                   fill=data.fill, brightness=data.brightness, contrast=data.contrast,
                   saturation=data.saturation, hue=data.hue,
                   random_resized_crop=data.random_resized_crop,
                   crop_scale=tuple(data.crop_scale), crop_ratio=tuple(data.crop_ratio),
                   standardize=data.standardize, order=tuple(data.augment_order),
                   cutout=data.cutout, mixup=data.mixup, cutmix=data.cutmix)

    def enabled_ops(self) -> tuple[str, ...]:
        """The ops whose settings turn them on, in the default order."""
        return tuple(name for name, op in AUGMENT_OPS.items() if op.enabled(self))

    def ops(self) -> tuple[str, ...]:
        """The ops ``augment`` applies, in order."""
        return self.order or self.enabled_ops()


def _global_array(x: np.ndarray, sharding: NamedSharding) -> Array:
    """A global array from a host array every process holds in full.

    Each process materialises only the slices its own devices hold.
    """
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


class ResidentInput:
    """The resident data set as the training loop's input (``streaming.StreamingInput``
    has the same interface): the step's arguments are the device data and the
    epoch's order, from which the jitted step gathers its own batch."""

    kind = 'resident'
    multi_step = True  # the data does not change between steps: K steps per dispatch

    def __init__(self, data: DeviceData, order_fn: Any, steps_per_epoch: int):
        self.data, self._order_fn, self._steps_per_epoch = data, order_fn, steps_per_epoch
        self._order = None

    def start_at(self, step: int, manager: Any = None) -> None:
        del step, manager  # the order is drawn from the state's step

    def step_args(self, step: int, state: Any) -> tuple[DeviceData, Array]:
        if self._order is None or step % self._steps_per_epoch == 0:
            self._order = self._order_fn(state.step)  # on the device: no transfer
        return self.data, self._order

    def checkpoint_item(self) -> None:
        return None

    def close(self) -> None:
        """Nothing to stop: the data lives on the devices."""

    def eval_batches(self, batch_size: int = 0) -> Iterator[dict[str, Array]]:
        del batch_size  # placed in batches by to_device
        return eval_batches(self.data)


def eval_batches(data: DeviceData) -> Iterator[dict[str, Array]]:
    """The resident eval set as global batches ``{'image', 'label', 'mask'}``."""
    return unstack_batches(data.eval_images, data.eval_labels, data.eval_mask)


def unstack_batches(images: Array, labels: Array, mask: Array) -> Iterator[dict[str, Array]]:
    """Stacked (num_batches, batch, ...) arrays as one batch dict at a time."""
    for i in range(labels.shape[0]):
        yield {'image': images[i], 'label': labels[i], 'mask': mask[i]}


def pad_eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pads to whole batches and reshapes to (num_batches, batch_size, ...) + mask."""
    n = len(labels)
    num_batches = -(-n // batch_size)
    pad = num_batches * batch_size - n
    mask = np.concatenate([np.ones(n, bool), np.zeros(pad, bool)])
    images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    shape = (num_batches, batch_size)
    return (images.reshape(shape + images.shape[1:]), labels.reshape(shape),
            mask.reshape(shape))


def pixel_dtype(channels: int) -> np.dtype:
    """The unsigned word that holds one pixel's ``channels`` uint8 values."""
    if not 1 <= channels <= 4:
        raise ValueError(f'images have {channels} channels; the device input pipeline '
                         'supports 1 to 4 (grey, grey + alpha, RGB, RGBA).')
    return np.dtype({1: np.uint8, 2: np.uint16}.get(channels, np.uint32))


def pack_pixels(images: np.ndarray, padding: int = 0, mode: str = 'constant') -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, H, W + 2 * padding) words, channel c in byte c.

    The columns are padded as ``random_crop`` pads (zeros or reflection), so
    that a crop's rows are contiguous runs of the stored rows.
    """
    dtype = pixel_dtype(images.shape[-1])
    words = np.zeros(images.shape[:-1], dtype)
    for c in range(images.shape[-1]):
        words |= images[..., c].astype(dtype) << (8 * c)
    pad_mode = 'constant' if mode == 'constant' else 'reflect'
    return np.pad(words, ((0, 0), (0, 0), (padding, padding)), pad_mode)


def unpack_pixels(words: Array, channels: int) -> Array:
    """(...) pixel words -> (..., channels) uint8: the inverse of ``pack_pixels``."""
    shifts = jnp.arange(channels, dtype=words.dtype) * 8
    return ((words[..., None] >> shifts) & 0xFF).astype(jnp.uint8)


def stored_padding(augmentation: Augmentation | None) -> int:
    """The column padding to store: the crop's, when the crop is the first op."""
    if augmentation is None or augmentation.ops()[:1] != ('crop',):
        return 0
    return augmentation.crop_padding


def place_eval_batches(images: np.ndarray, labels: np.ndarray, mesh: Mesh, batch_size: int
                       ) -> tuple[Array, Array, Array]:
    """(num_batches, batch, ...) images, labels and mask on the mesh, sharded on the batch
    axis; the batch rounded up to a multiple of the device count (padded, masked)."""
    spec = NamedSharding(mesh, P(None, 'data'))
    ex, ey, em = pad_eval_batches(images, labels,
                                  sharding.round_up_to_devices(batch_size, mesh.size))
    return (_global_array(ex, spec), _global_array(ey.astype(np.int32), spec),
            _global_array(em, spec))


def to_device(ds: datasets.ImageDataset, mesh: Mesh, eval_batch_size: int,
              augmentation: Augmentation | None = None, with_train: bool = True,
              packed: bool = True) -> DeviceData:
    """Places the training set (replicated) and the eval batches (sharded).

    ``packed`` stores the training set as pixel words (the CPU's fast path);
    with the run's ``augmentation`` they are padded for its crop, and the crop is
    then the gather itself; without, any ``augmentation`` still gives the same
    batches, the slower way.  ``packed=False`` stores uint8 images (GPU/TPU).  The eval batch
    is rounded up to a multiple of the device count (padded and masked).
    ``with_train=False`` (evaluation only) leaves the training set on the host:
    its arrays are empty.
    """
    replicated = NamedSharding(mesh, P())
    ex, ey, em = place_eval_batches(ds.eval_images, ds.eval_labels, mesh, eval_batch_size)
    padding = stored_padding(augmentation) if packed else 0
    mode = augmentation.padding_mode if augmentation is not None and packed else 'constant'
    keep = slice(None) if with_train else slice(0)
    train_images = ds.train_images[keep]
    return DeviceData(
        train_pixels=_global_array(
            pack_pixels(train_images, padding, mode) if packed else train_images, replicated),
        train_labels=_global_array(ds.train_labels[keep].astype(np.int32), replicated),
        eval_images=ex, eval_labels=ey, eval_mask=em,
        channels=ds.train_images.shape[-1], train_padding=padding, padding_mode=mode,
        packed=packed,
    )


# --------------------------------------------------------------------------- #
# Pure functions, used inside jit
# --------------------------------------------------------------------------- #
def epoch_order(data_key: Array, epoch: Array, num_examples: int, steps_per_epoch: int,
                batch_size: int) -> Array:
    """(steps_per_epoch, batch_size) example indices of one epoch (remainder dropped)."""
    perm = jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)
    return perm[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)


def normalize(images: Array, augmentation: Augmentation, dtype: Any = jnp.float32) -> Array:
    """uint8 -> float, optionally resized, standardised (the same for train and eval).

    ``augmentation.standardize``: 'channel'/'scalar' use its ``mean``/``std`` (one
    value broadcasts over the channels); 'image' uses each image's own mean and std,
    as ``tf.image.per_image_standardization``.
    """
    x = images.astype(jnp.float32) / 255.0
    size = augmentation.image_size
    if size and x.shape[1] != size:
        x = jax.image.resize(x, x.shape[:1] + (size, size) + x.shape[3:], 'bilinear')
    if augmentation.standardize == 'image':
        axes = tuple(range(1, x.ndim))
        mean = jnp.mean(x, axes, keepdims=True)
        # The floor keeps a constant image finite (TF's 1/sqrt(num_pixels)).
        floor = 1.0 / jnp.sqrt(jnp.float32(x[0].size))
        x = (x - mean) / jnp.maximum(jnp.std(x, axes, keepdims=True), floor)
    else:
        x = ((x - jnp.asarray(augmentation.mean, jnp.float32))
             / jnp.asarray(augmentation.std, jnp.float32))
    return x.astype(dtype)


def crop_offsets(keys: Array, padding: int) -> Array:
    """(n, 2) crop offsets (dy, dx) in [0, 2 * padding], one pair per key."""
    return jax.vmap(lambda k: jax.random.randint(k, (2,), 0, 2 * padding + 1))(keys)


def random_crop(images: Array, keys: Array, padding: int, mode: str) -> Array:
    """Pads by ``padding`` (zeros or reflection) and crops back at random offsets."""
    n, h, w, c = images.shape
    pad_mode = 'constant' if mode == 'constant' else 'reflect'
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)), pad_mode)
    crop_one = lambda img, off: jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))
    return jax.vmap(crop_one)(padded, crop_offsets(keys, padding))


def gather_windows(words: Array, idx: Array, offsets: Array, padding: int, mode: str) -> Array:
    """(n, H, W) windows of stored images ``words[idx]`` at ``offsets`` (n, 2).

    ``words`` is ``pack_pixels(images, padding, mode)``; offset (dy, dx) takes
    the window a ``padding``-padded copy would show at (dy, dx), so (padding,
    padding) is the image itself.  Gathers whole rows of W words; rows that
    fall in the vertical padding read a clamped row, then are zeroed
    ('constant'), or read the reflected row ('reflect').
    """
    n, (_, h, stored_w) = idx.shape[0], words.shape
    w = stored_w - 2 * padding
    rows = jnp.arange(h)[None, :] + offsets[:, :1] - padding  # (n, h), may leave [0, h)
    if mode == 'constant':
        src = jnp.clip(rows, 0, h - 1)
    else:  # reflect without repeating the edge, as jnp.pad's 'reflect'
        src = jnp.abs(rows)
        src = jnp.where(src > h - 1, 2 * (h - 1) - src, src)
    starts = jnp.stack([jnp.broadcast_to(idx[:, None], (n, h)), src,
                        jnp.broadcast_to(offsets[:, 1:], (n, h))], axis=-1)
    dims = jax.lax.GatherDimensionNumbers(offset_dims=(2,), collapsed_slice_dims=(0, 1),
                                          start_index_map=(0, 1, 2))
    out = jax.lax.gather(words, starts, dims, (1, 1, w), mode='clip')
    if mode == 'constant':
        out = jnp.where(((rows >= 0) & (rows < h))[:, :, None], out, 0)
    return out


def random_hflip(images: Array, keys: Array) -> Array:
    flip = jax.vmap(lambda k: jax.random.bernoulli(k))(keys)
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def random_vflip(images: Array, keys: Array) -> Array:
    flip = jax.vmap(lambda k: jax.random.bernoulli(k))(keys)
    return jnp.where(flip[:, None, None, None], images[:, ::-1], images)


def _to_uint8(x: Array) -> Array:
    """Rounds [0, 255] floats back to pixels, as each PIL transform does."""
    return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)


def _sample(img: Array, rows: Array, cols: Array, order: int, mode: str) -> Array:
    """``img`` (H, W, C) read at fractional (rows, cols), every channel alike."""
    read = lambda ch: jax.scipy.ndimage.map_coordinates(ch, [rows, cols], order, mode=mode)
    return jax.vmap(read, in_axes=2, out_axes=-1)(img.astype(jnp.float32))


def random_affine(images: Array, keys: Array, rotation: float, height_shift: float,
                  width_shift: float, interpolation: str = 'bilinear',
                  fill: str = 'constant') -> Array:
    """Rotation by U(-rotation, rotation) degrees and shift by U(-s, s) * size, one warp.

    Keras ImageDataGenerator's composition: the output pixel p reads the input
    at c + R(p - c + t), with c the image centre; 'bilinear' is Keras' order-1
    spline, 'nearest' torchvision RandomRotation's default.  ``fill``: 'constant'
    reads black outside the image (torchvision), 'nearest' the edge (Keras).
    """
    n, h, w, c = images.shape
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32),
                              jnp.arange(w, dtype=jnp.float32), indexing='ij')
    cy, cx = (h - 1) / 2, (w - 1) / 2
    order = 1 if interpolation == 'bilinear' else 0

    def one(img, key):
        ka, ky, kx = jax.random.split(key, 3)
        theta = jnp.deg2rad(jax.random.uniform(ka, (), minval=-rotation, maxval=rotation))
        dy = rows - cy + jax.random.uniform(ky, (), minval=-height_shift, maxval=height_shift) * h
        dx = cols - cx + jax.random.uniform(kx, (), minval=-width_shift, maxval=width_shift) * w
        cos, sin = jnp.cos(theta), jnp.sin(theta)
        return _to_uint8(_sample(img, cy + cos * dy - sin * dx, cx + sin * dy + cos * dx,
                                 order, fill))

    return jax.vmap(one)(images, keys)


_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL and torchvision


def _grayscale(x: Array) -> Array:
    return jnp.tensordot(x, jnp.asarray(_GRAY, x.dtype), axes=[[-1], [0]])[..., None]


def _rgb_to_hsv(x: Array) -> Array:
    """[0, 1] RGB -> HSV with hue in [0, 1) (torchvision's formulas)."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    maxc, minc = jnp.max(x, -1), jnp.min(x, -1)
    delta = maxc - minc
    safe = jnp.where(delta == 0, 1.0, delta)
    s = delta / jnp.where(maxc == 0, 1.0, maxc)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = jnp.where(maxc == r, bc - gc, jnp.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = jnp.where(delta == 0, 0.0, (h / 6.0) % 1.0)
    return jnp.stack([h, s, maxc], -1)


def _hsv_to_rgb(x: Array) -> Array:
    """HSV -> RGB, the closed form (elementwise: no gather, quick to compile)."""
    h, s, v = x[..., 0:1], x[..., 1:2], x[..., 2:3]
    k = (jnp.asarray([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def random_color_jitter(images: Array, keys: Array, brightness: float = 0.0,
                        contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0
                        ) -> Array:
    """torchvision ColorJitter: factors U(1-s, 1+s) (hue: U(-h, h)), random op order."""
    strengths = (brightness, contrast, saturation, hue)

    def shift_hue(x, factor):
        if x.shape[-1] != 3:
            return x
        hsv = _rgb_to_hsv(x)
        return _hsv_to_rgb(hsv.at[..., 0].set((hsv[..., 0] + factor) % 1.0))

    branches = [
        lambda x, f: x * f,  # brightness: blend with black
        lambda x, f: f * x + (1 - f) * jnp.mean(_grayscale(x)),  # contrast: with mean grey
        lambda x, f: f * x + (1 - f) * _grayscale(x),  # saturation: with the grey image
        shift_hue,
    ]
    enabled = jnp.asarray([s > 0 for s in strengths])

    def one(img, key):
        kperm, kf = jax.random.split(key)
        lo = jnp.asarray([max(0.0, 1 - s) for s in strengths[:3]] + [-hue])
        hi = jnp.asarray([1 + s for s in strengths[:3]] + [hue])
        factors = jax.random.uniform(kf, (4,), minval=lo, maxval=hi)
        perm = jax.random.permutation(kperm, 4)  # torchvision's random order

        def apply(i, x):
            op = perm[i]
            y = jnp.clip(jax.lax.switch(op, branches, x, factors[op]), 0.0, 1.0)
            return jnp.where(enabled[op], y, x)  # an op at strength 0 is skipped exactly

        x = jax.lax.fori_loop(0, 4, apply, img.astype(jnp.float32) / 255.0)
        return _to_uint8(x * 255.0)

    return jax.vmap(one)(images, keys)


def random_resized_crop(images: Array, keys: Array, size: int,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10
                        ) -> Array:
    """torchvision RandomResizedCrop: a random box of ``scale`` area and ``ratio``
    aspect (first of ``attempts`` tries that fits, else the central crop), resized
    bilinearly to ``size`` x ``size``."""
    n, h, w, c = images.shape
    log_ratio = (jnp.log(ratio[0]), jnp.log(ratio[1]))

    def box(key):
        ka, kr, ki, kj = jax.random.split(key, 4)
        area = h * w * jax.random.uniform(ka, (attempts,), minval=scale[0], maxval=scale[1])
        aspect = jnp.exp(jax.random.uniform(kr, (attempts,), minval=log_ratio[0],
                                            maxval=log_ratio[1]))
        cw = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
        ch = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
        ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        top = jax.random.randint(ki, (attempts,), 0, jnp.maximum(h - ch + 1, 1))
        left = jax.random.randint(kj, (attempts,), 0, jnp.maximum(w - cw + 1, 1))
        # Fallback: the whole image, cut to the nearest allowed aspect ratio.
        in_ratio = w / h
        fw, fh = ((w, round(w / ratio[0])) if in_ratio < ratio[0] else
                  (round(h * ratio[1]), h) if in_ratio > ratio[1] else (w, h))
        first = jnp.argmax(ok)
        pick = lambda v, fallback: jnp.where(ok.any(), v[first], fallback)
        return (pick(top, (h - fh) // 2), pick(left, (w - fw) // 2), pick(ch, fh),
                pick(cw, fw))

    def weights(start, length, n):
        """(size, n) bilinear weights reading [start, start + length) at half-pixel centres."""
        centres = start + (jnp.arange(size, dtype=jnp.float32) + 0.5) * length / size - 0.5
        centres = jnp.clip(centres, 0, n - 1)  # edge pixels repeat, as PIL
        return jnp.maximum(0.0, 1.0 - jnp.abs(centres[:, None] - jnp.arange(n)))

    def one(img, key):
        top, left, ch, cw = box(key)
        # An axis-aligned box: the resize is separable, two small matmuls.
        wy, wx = weights(top, ch, h), weights(left, cw, w)
        out = jnp.einsum('yh,hwc,xw->yxc', wy, img.astype(jnp.float32), wx,
                         precision=jax.lax.Precision.HIGHEST)
        return _to_uint8(out)

    return jax.vmap(one)(images, keys)


def alternate_flips(data_key: Array, example_ids: Array, epoch: Array) -> Array:
    """airbench's alternating flip: a fixed random half of the examples (drawn once
    per example from the data key) is mirrored in even epochs, the other half in
    odd ones, so every image is seen both ways in any two consecutive epochs."""
    flip_key = jax.random.fold_in(data_key, 2)
    fixed = jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(flip_key, i)))(
        example_ids)
    return fixed ^ (epoch % 2 == 1)


def _first_crop_and_flip_keys(keys: Array) -> tuple[Array, Array]:
    return jax.vmap(lambda k: jax.random.split(k, 2), out_axes=1)(keys)


# The registered ops, in their default order.  Each adapts a pure function of
# this module to (images, keys, augmentation, flips).
@register_op('color_jitter', lambda a: bool(a.brightness or a.contrast or a.saturation or a.hue))
def _color_jitter_op(images, keys, a, flips):
    return random_color_jitter(images, keys, a.brightness, a.contrast, a.saturation, a.hue)


@register_op('random_resized_crop', lambda a: a.random_resized_crop)
def _random_resized_crop_op(images, keys, a, flips):
    return random_resized_crop(images, keys, a.image_size or images.shape[1], a.crop_scale,
                               a.crop_ratio)


@register_op('affine', lambda a: bool(a.rotation or a.width_shift or a.height_shift))
def _affine_op(images, keys, a, flips):
    return random_affine(images, keys, a.rotation, a.height_shift, a.width_shift,
                         a.interpolation, a.fill)


@register_op('crop', lambda a: a.crop_padding > 0, whole_pixels=True)
def _crop_op(images, keys, a, flips):
    return random_crop(images, keys, a.crop_padding, a.padding_mode)


@register_op('hflip', lambda a: a.hflip, whole_pixels=True)
def _hflip_op(images, keys, a, flips):
    if flips is None:
        return random_hflip(images, keys)
    return jnp.where(flips[:, None, None, None], images[:, :, ::-1], images)


@register_op('vflip', lambda a: a.vflip, whole_pixels=True)
def _vflip_op(images, keys, a, flips):
    return random_vflip(images, keys)


def augment(images: Array, keys: Array, augmentation: Augmentation,
            flips: Array | None = None, start: int = 0) -> Array:
    """Per-example random augmentation of uint8 images (one key per example).

    Applies ``augmentation.ops()[start:]`` in order (the first ``start`` ops were
    applied already, e.g. a crop done by the gather); ops registered with
    ``whole_pixels`` also run on pixel words, (n, H, W, 1).  ``flips`` (per-example booleans), when given, decide
    the horizontal flips instead of random draws.  The first crop and first
    horizontal flip draw from the same keys as before these ops existed, so runs
    that use only them keep their exact batches; every other op (or repeat) gets
    its own key.
    """
    crop_keys, flip_keys = _first_crop_and_flip_keys(keys)
    first = {'crop': crop_keys, 'hflip': flip_keys}
    for i, op in enumerate(augmentation.ops()):
        op_keys = first.pop(op, None)
        if i < start:
            continue
        if op_keys is None:
            op_keys = jax.vmap(lambda k, i=i: jax.random.fold_in(k, 1000 + i))(keys)
        images = AUGMENT_OPS[op].apply(images, op_keys, augmentation, flips)
    return images


def example_keys(data_key: Array, idx: Array, position: Array, epoch: Array,
                 augmentation: Augmentation) -> tuple[Array, Array | None]:
    """Per-example augmentation keys from (seed, epoch, position in the epoch), and
    airbench's alternating flips of the examples ``idx`` (None unless configured).

    ``position`` is the step within the epoch: the keys do not depend on the
    device or host count, nor on whether the batch was gathered or streamed.
    """
    batch_size = idx.shape[0]
    epoch_key = jax.random.fold_in(jax.random.fold_in(data_key, 1), epoch)
    positions = position * batch_size + jnp.arange(batch_size)
    keys = jax.vmap(lambda p: jax.random.fold_in(epoch_key, p))(positions)
    flips = alternate_flips(data_key, idx, epoch) if augmentation.flip_mode == 'alternate' else None
    return keys, flips


def random_cutout(images: Array, keys: Array, size: int) -> Array:
    """Cutout (DeVries & Taylor 2017): in each image, a ``size`` x ``size`` square
    centred on a uniformly random pixel (clipped at the borders) set to zero.

    Applied to *normalised* images, as the authors' code applies it after
    ``Normalize``: zero is the mean colour under per-channel normalisation.
    """
    n, h, w = images.shape[:3]
    rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]

    def one(img, key):
        cy, cx = jax.random.randint(key, (2,), 0, jnp.asarray([h, w]))
        inside = ((rows >= cy - size // 2) & (rows < cy + size // 2)
                  & (cols >= cx - size // 2) & (cols < cx + size // 2))
        return jnp.where(inside[:, :, None], jnp.zeros((), img.dtype), img)

    return jax.vmap(one)(images, keys)


def mix_with_partner(images: Array, labels: Array, keys: Array, mixup: float,
                     cutmix: float) -> dict[str, Array]:
    """mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019), per example.

    Each example is mixed with the one before it in the (shuffled) batch.  mixup
    blends the two images with weight lam ~ Beta(mixup, mixup); CutMix pastes
    the partner's pixels into a box of area fraction 1 - lam, lam ~ Beta(cutmix,
    cutmix), centred at a random pixel and clipped at the borders, after which
    lam is the area actually kept (the CutMix authors' code).  With both > 0, each
    example uses one of them with probability 1/2.  Returns the batch with
    ``mixed_label`` (the partner's label) and ``mix_weight`` (lam): the loss is
    lam * CE(label) + (1 - lam) * CE(mixed_label) (``train.batch_loss``).
    """
    n, h, w = images.shape[:3]
    partner_images, partner_labels = jnp.roll(images, 1, axis=0), jnp.roll(labels, 1, axis=0)
    rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]

    def one(img, other, key):
        kpick, kmix, kcut, ky, kx = jax.random.split(key, 5)
        use_cutmix = (cutmix > 0) & ((mixup == 0) | jax.random.bernoulli(kpick))
        lam_mix = jax.random.beta(kmix, mixup, mixup) if mixup > 0 else jnp.float32(1)
        lam_cut = jax.random.beta(kcut, cutmix, cutmix) if cutmix > 0 else jnp.float32(1)
        half_h = (h * jnp.sqrt(1 - lam_cut)).astype(jnp.int32) // 2
        half_w = (w * jnp.sqrt(1 - lam_cut)).astype(jnp.int32) // 2
        cy, cx = jax.random.randint(ky, (), 0, h), jax.random.randint(kx, (), 0, w)
        y1, y2 = jnp.clip(cy - half_h, 0, h), jnp.clip(cy + half_h, 0, h)
        x1, x2 = jnp.clip(cx - half_w, 0, w), jnp.clip(cx + half_w, 0, w)
        box = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)
        cut = jnp.where(box[:, :, None], other, img)
        blend = (lam_mix * img.astype(jnp.float32)
                 + (1 - lam_mix) * other.astype(jnp.float32)).astype(img.dtype)
        lam_box = 1 - ((y2 - y1) * (x2 - x1)).astype(jnp.float32) / (h * w)
        return (jnp.where(use_cutmix, cut, blend), jnp.where(use_cutmix, lam_box, lam_mix))

    mixed, weight = jax.vmap(one)(images, partner_images, keys)
    return {'image': mixed, 'label': labels, 'mixed_label': partner_labels,
            'mix_weight': weight}


def finish_batch(images: Array, labels: Array, keys: Array, augmentation: Augmentation,
                 dtype: Any = jnp.float32) -> dict[str, Array]:
    """The training batch from augmented uint8 images: ``normalize``, then cutout,
    then mixup/CutMix when configured (each with its own key per example)."""
    x = normalize(images, augmentation, dtype)
    if augmentation.cutout:
        x = random_cutout(x, jax.vmap(lambda k: jax.random.fold_in(k, 2000))(keys),
                          augmentation.cutout)
    if augmentation.mixup or augmentation.cutmix:
        return mix_with_partner(x, labels, jax.vmap(lambda k: jax.random.fold_in(k, 3000))(keys),
                                augmentation.mixup, augmentation.cutmix)
    return {'image': x, 'label': labels}


def augment_batch(images: Array, labels: Array, idx: Array, position: Array, epoch: Array,
                  data_key: Array, augmentation: Augmentation, dtype: Any = jnp.float32
                  ) -> dict[str, Array]:
    """A training batch from uint8 images (N, H, W, C): every op of ``augmentation``, then
    ``normalize``.  ``idx`` are the examples' indices in the data set."""
    keys, flips = example_keys(data_key, idx, position, epoch, augmentation)
    images = augment(images, keys, augmentation, flips)
    return finish_batch(images, labels, keys, augmentation, dtype)


def train_batch(data: DeviceData, order: Array, step: Array, epoch: Array, data_key: Array,
                augmentation: Augmentation, dtype: Any = jnp.float32,
                batch_sharding: NamedSharding | None = None) -> dict[str, Array]:
    """The augmented global batch for ``step`` (within its epoch's ``order``).

    When ``data`` was stored padded for this crop (``to_device`` with the same
    ``augmentation``) and the crop is the first op, the crop is the gather itself.
    """
    steps_per_epoch, batch_size = order.shape
    position = step % steps_per_epoch
    idx = jax.lax.dynamic_index_in_dim(order, position, keepdims=False)
    if batch_sharding is not None:
        # Shard the indices: each device then gathers and augments only its slice.
        idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
    labels = data.train_labels[idx]
    if not data.packed:  # uint8 images: every op, the crop included, per example
        return augment_batch(data.train_pixels[idx], labels, idx, position, epoch, data_key,
                             augmentation, dtype)
    keys, flips = example_keys(data_key, idx, position, epoch, augmentation)
    ops, pad = augmentation.ops(), data.train_padding
    # The first op is a crop the data were padded for: it is the gather itself.
    crop_by_gather = (ops[:1] == ('crop',) and pad == augmentation.crop_padding
                      and data.padding_mode == augmentation.padding_mode)
    offsets = (crop_offsets(_first_crop_and_flip_keys(keys)[0], pad) if crop_by_gather
               else jnp.full((batch_size, 2), pad))
    words = gather_windows(data.train_pixels, idx, offsets, pad, data.padding_mode)
    start = int(crop_by_gather)
    if all(AUGMENT_OPS[op].whole_pixels for op in ops[start:]):
        words = augment(words[..., None], keys, augmentation, flips, start)[..., 0]
        images = unpack_pixels(words, data.channels)
    else:
        images = augment(unpack_pixels(words, data.channels), keys, augmentation, flips, start)
    return finish_batch(images, labels, keys, augmentation, dtype)
