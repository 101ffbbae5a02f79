"""Preprocessing: the registered ops and the spec strings that compose them.

A spec is ops joined by ``|``, each a name with Python literal arguments, e.g.
``config.data.train_pp = 'crop(4)|flip_lr|normalize|cutout(16)'``.  ``normalize``
marks where uint8 pixels become standardised floats (``Normalization``: the data
set's mean/std, not an augmentation); ops before it change pixels (per example,
with one random key each), ops after it change the normalised images (cutout)
or mix examples and their labels (mixup, cutmix: last).  ``data.eval_pp`` (and
``predict.pp``) take only deterministic ops.

Every op is a pure function of (images, keys, its arguments), registered with
``register_op``; ``resident.train_batch`` plans how to run a spec on the
stored data (a leading ``crop`` becomes the gather itself on the CPU's packed
pixels).  Keys: the first ``crop`` and the first ``flip_lr`` draw from the two
halves of the example's key, any other op before ``normalize`` from
``fold_in(key, 1000 + its position)``, cutout from ``fold_in(key, 2000)``, the
mixing from ``fold_in(key, 3000)``: a spec's batches depend only on the seed,
the epoch and the position in it.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxres.data import host_ops

Array = jax.Array


class SpecError(ValueError):
    """A preprocessing spec that cannot be parsed or run (the message says why)."""


class Op(NamedTuple):
    """A registered op: ``apply(images, keys, **arguments) -> images``.

    ``stage``: 'pixels' (uint8 images, before ``normalize``), 'normalize',
    'normalized' (float images, after it) or 'mix' (examples and labels, last).
    ``whole_pixels`` ops only move whole pixels, so they also run on packed pixel
    words (n, H, W, 1).  ``random`` ops are for training specs only.  ``apply``'s
    keyword-only parameters (``context``) are not spec arguments: the pipeline
    passes them (the alternating flips, the labels).
    """

    apply: Callable[..., Array]
    stage: str = 'pixels'
    whole_pixels: bool = False
    random: bool = True
    choices: dict[str, tuple[Any, ...]] = {}  # argument -> its allowed values
    check: Callable[..., str] | None = None  # arguments -> what is wrong ('' = nothing)
    context: tuple[str, ...] = ()  # keyword-only arguments the pipeline passes in


OPS: dict[str, Op] = {}


def register_op(name: str, stage: str = 'pixels', whole_pixels: bool = False,
                random: bool = True, check: Callable[..., str] | None = None,
                **choices: tuple[Any, ...]) -> Callable[[Callable], Callable]:
    """Decorator: registers ``apply`` as the op ``name`` of preprocessing specs;
    ``choices``: the allowed values of some of its arguments; ``check(**arguments)``
    says what is wrong with the others ('' when nothing)."""

    def add(apply: Callable) -> Callable:
        if name in OPS:
            raise ValueError(f'preprocessing op {name!r} is registered twice.')
        context = tuple(p.name for p in inspect.signature(apply).parameters.values()
                        if p.kind == inspect.Parameter.KEYWORD_ONLY)
        OPS[name] = Op(apply, stage, whole_pixels, random, choices, check, context)
        return apply

    return add


@dataclasses.dataclass(frozen=True)
class Step:
    """One op of a spec with all its arguments (defaults filled in): hashable."""

    name: str
    arguments: tuple[tuple[str, Any], ...] = ()

    @property
    def op(self) -> Op:
        return OPS[self.name]

    def __getitem__(self, key: str) -> Any:
        return dict(self.arguments)[key]

    def replace(self, **arguments: Any) -> 'Step':
        return Step(self.name, tuple({**dict(self.arguments), **arguments}.items()))

    def __call__(self, images: Array, keys: Array | None, **context: Any) -> Array:
        """Applies the op; of ``context``, it receives what it declares."""
        wanted = {k: v for k, v in context.items() if k in self.op.context}
        return self.op.apply(images, keys, **dict(self.arguments), **wanted)

    def __str__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.arguments)})"


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, (list, tuple)) else value


def parse_step(text: str) -> Step:
    """``'crop(4, mode="reflect")'`` -> Step('crop', (('padding', 4), ('mode', 'reflect')))."""
    try:
        node = ast.parse(text.strip(), mode='eval').body
        if isinstance(node, ast.Name):
            name, args, kwargs = node.id, [], {}
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name = node.func.id
            args = [ast.literal_eval(a) for a in node.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        else:
            raise ValueError('not name(arguments)')
    except (SyntaxError, ValueError) as e:
        raise SpecError(f'{text.strip()!r} is not an op: write name or name(arguments) with '
                        f'literal arguments ({e}).') from None
    if name not in OPS:
        raise SpecError(f'unknown preprocessing op {name!r}; choose from {sorted(OPS)}.')
    signature = inspect.signature(OPS[name].apply)  # the spec's arguments: not the context
    signature = signature.replace(parameters=[p for p in signature.parameters.values()
                                              if p.kind != p.KEYWORD_ONLY])
    try:
        bound = signature.bind(None, None, *args, **kwargs)
    except TypeError as e:
        parameters = [str(p) for p in list(signature.parameters.values())[2:]]
        raise SpecError(f'{text.strip()!r}: {e}; {name} takes ({", ".join(parameters)}).'
                        ) from None
    bound.apply_defaults()
    arguments = {k: _hashable(v) for k, v in list(bound.arguments.items())[2:]}
    for key, allowed in OPS[name].choices.items():
        if arguments[key] not in allowed:
            raise SpecError(f'{text.strip()!r}: {key}={arguments[key]!r}; choose from '
                            f'{list(allowed)}.')
    problem = OPS[name].check(**arguments) if OPS[name].check else ''
    if problem:
        raise SpecError(f'{text.strip()!r}: {problem}.')
    return Step(name, tuple(arguments.items()))


def parse(spec: str) -> tuple[Step, ...]:
    """A ``'op1|op2(args)'`` spec as its steps (empty parts are skipped)."""
    return tuple(parse_step(part) for part in spec.split('|') if part.strip())


@dataclasses.dataclass(frozen=True)
class Normalization:
    """uint8 -> float: optional bilinear resize to ``image_size``, then standardise.

    ``standardize``: 'channel'/'scalar' use ``mean``/``std`` (one value
    broadcasts over the channels); 'image' each image's own mean and std, as
    ``tf.image.per_image_standardization``.  The same for train, eval, predict.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    standardize: str = 'channel'
    image_size: int = 0

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> 'Normalization':
        d = config.data
        return cls(tuple(d.mean), tuple(d.std), d.standardize, d.image_size)


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """A parsed spec with the data's normalisation (static: closed over by jit)."""

    steps: tuple[Step, ...]
    normalization: Normalization

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, split: str = 'train'
                    ) -> 'Preprocess':
        """``split``: 'train' (``data.train_pp``), 'eval' (``data.eval_pp``) or
        'predict' (``predict.pp``, '' = the eval spec)."""
        spec = {'train': config.data.train_pp, 'eval': config.data.eval_pp,
                'predict': config.get('predict', {}).get('pp', '') or config.data.eval_pp}[split]
        return cls.from_spec(spec, Normalization.from_config(config), split != 'train')

    @classmethod
    def from_spec(cls, spec: str, normalization: Normalization, deterministic: bool = False
                  ) -> 'Preprocess':
        steps = parse(spec)
        check_order(spec, steps, deterministic)
        # random_resized_crop(size=0): the size the model sees.
        steps = tuple(s.replace(size=normalization.image_size) if s.name == 'random_resized_crop'
                      and not s['size'] and normalization.image_size else s for s in steps)
        return cls(steps, normalization)

    def _stage(self, *stages: str) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.op.stage in stages)

    @property
    def pixel_steps(self) -> tuple[Step, ...]:
        """The ops on uint8 pixels, before ``normalize``, in order."""
        return self._stage('pixels')

    @property
    def normalized_steps(self) -> tuple[Step, ...]:
        return self._stage('normalized')

    @property
    def mix_steps(self) -> tuple[Step, ...]:
        return self._stage('mix')

    @property
    def alternate_flips(self) -> bool:
        return any(s.name == 'flip_lr' and s['mode'] == 'alternate' for s in self.steps)

    def find(self, name: str) -> Step | None:
        """The first step of op ``name``, or None."""
        return next((s for s in self.steps if s.name == name), None)

    def without(self, name: str) -> 'Preprocess':
        """This spec with every ``name`` step left out (e.g. one done on the host)."""
        return dataclasses.replace(self, steps=tuple(s for s in self.steps if s.name != name))

    def __str__(self) -> str:
        return '|'.join(map(str, self.steps))


STAGE_ORDER = ('pixels', 'normalize', 'normalized', 'mix')


def check_order(spec: str, steps: tuple[Step, ...], deterministic: bool) -> None:
    """One ``normalize``; pixel ops before it, the others after, mixing last."""
    names = [s.name for s in steps]
    if names.count('normalize') != 1:
        raise SpecError(f'preprocessing spec {spec!r} must contain normalize exactly once '
                        f"(e.g. 'crop(4)|flip_lr|normalize').")
    ranks = [STAGE_ORDER.index(s.op.stage) for s in steps]
    for (a, ra), (b, rb) in zip(zip(names, ranks), zip(names[1:], ranks[1:])):
        if rb < ra:
            raise SpecError(f'preprocessing spec {spec!r}: {b} cannot come after {a} (ops on '
                            'pixels come before normalize, cutout after it, mixup/cutmix last).')
    for name in ('mixup', 'cutmix'):
        if names.count(name) > 1:
            raise SpecError(f'preprocessing spec {spec!r} has {name} twice.')
    if deterministic and any(s.op.random for s in steps):
        random_ops = sorted({s.name for s in steps if s.op.random})
        raise SpecError(f'evaluation/prediction spec {spec!r} has random ops {random_ops}; '
                        'it takes deterministic ops only (e.g. normalize).')


# --------------------------------------------------------------------------- #
# The ops: pure functions, used inside jit.
# --------------------------------------------------------------------------- #
def resize_matrix(length: int, size: int) -> np.ndarray:
    """(size, length) float32: row o holds the weights of the ``length`` inputs for
    output o of ``jax.image.resize(..., 'bilinear')`` (a triangle kernel, widened by
    the scale when shrinking: antialiased), in NumPy at trace time."""
    scale = size / length
    kernel_scale = max(1 / scale, 1.0)
    sample = (np.arange(size) + 0.5) / scale - 0.5
    w = np.maximum(0.0, 1 - np.abs(sample[:, None] - np.arange(length)[None, :]) / kernel_scale)
    w /= np.maximum(w.sum(1, keepdims=True), np.finfo(np.float32).tiny)
    return w.astype(np.float32)


def resize_bilinear(x: Array, size: int) -> Array:
    """(N, H, W, C) floats -> (N, size, size, C), ``jax.image.resize``'s bilinear
    resize as two products with constant matrices: the batch size may stay symbolic
    (an exported program's, ``jaxres.export``), which resize's own shape logic refuses."""
    rows, cols = resize_matrix(x.shape[1], size), resize_matrix(x.shape[2], size)
    x = jnp.einsum('oh,nhwc->nowc', rows, x, precision='highest')
    return jnp.einsum('pw,nowc->nopc', cols, x, precision='highest')


def normalize(images: Array, normalization: Normalization, dtype: Any = jnp.float32) -> Array:
    """uint8 images -> standardised floats of ``dtype`` (``Normalization``)."""
    x = images.astype(jnp.float32) / 255.0
    size = normalization.image_size
    if size and x.shape[1] != size:
        x = resize_bilinear(x, size)
    if normalization.standardize == 'image':
        axes = tuple(range(1, x.ndim))
        mean = jnp.mean(x, axes, keepdims=True)
        # The floor keeps a constant image finite (TF's 1/sqrt(num_pixels)).
        floor = 1.0 / jnp.sqrt(jnp.float32(x[0].size))
        x = (x - mean) / jnp.maximum(jnp.std(x, axes, keepdims=True), floor)
    else:
        x = ((x - jnp.asarray(normalization.mean, jnp.float32))
             / jnp.asarray(normalization.std, jnp.float32))
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
        first = jnp.argmax(ok)
        pick = lambda v, fallback: jnp.where(ok.any(), v[first], fallback)
        return tuple(pick(v, f) for v, f in zip((top, left, ch, cw),
                                                host_ops.central_crop_box(h, w, ratio)))

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


def first_crop_and_flip_keys(keys: Array) -> tuple[Array, Array]:
    return jax.vmap(lambda k: jax.random.split(k, 2), out_axes=1)(keys)


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




# --------------------------------------------------------------------------- #
# The registry: each entry adapts a function above to a spec op.
# --------------------------------------------------------------------------- #
def _non_negative(**arguments: Any) -> str:
    wrong = [f'{k}={v!r}' for k, v in arguments.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0]
    return f"{', '.join(wrong)} must be >= 0" if wrong else ''


def _positive(**arguments: Any) -> str:
    wrong = [f'{k}={v!r}' for k, v in arguments.items() if not v > 0]
    return f"{', '.join(wrong)} must be > 0" if wrong else ''


def _check_jitter(**factors: float) -> str:
    if factors['hue'] > 0.5:
        return f"hue={factors['hue']!r} must be in [0, 0.5]"
    return _non_negative(**factors)


def _check_box(size: int, scale: tuple[float, float], ratio: tuple[float, float]) -> str:
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        return f'scale={scale!r} must satisfy 0 < lo <= hi <= 1'
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        return f'ratio={ratio!r} must satisfy 0 < lo <= hi'
    return _non_negative(size=size)


@register_op('crop', whole_pixels=True, check=_non_negative, mode=('constant', 'reflect'))
def _crop(images, keys, padding, mode='constant'):
    """crop(padding, mode): pad (zeros or reflection) and crop back at random."""
    return random_crop(images, keys, padding, mode)


@register_op('flip_lr', whole_pixels=True, mode=('random', 'alternate'))
def _flip_lr(images, keys, mode='random', *, flips=None):
    """flip_lr(mode): mirror with p=1/2 ('random'), or airbench's alternating flips."""
    if mode == 'random':
        return random_hflip(images, keys)
    return jnp.where(flips[:, None, None, None], images[:, :, ::-1], images)


@register_op('flip_ud', whole_pixels=True)
def _flip_ud(images, keys):
    """flip_ud: upside down with p=1/2."""
    return random_vflip(images, keys)


@register_op('affine', check=_non_negative, interpolation=('bilinear', 'nearest'),
             fill=('constant', 'nearest'))
def _affine(images, keys, rotation=0.0, width_shift=0.0, height_shift=0.0,
            interpolation='bilinear', fill='constant'):
    """affine(rotation, width_shift, height_shift, interpolation, fill): ``random_affine``."""
    return random_affine(images, keys, rotation, height_shift, width_shift, interpolation, fill)


@register_op('color_jitter', check=_check_jitter)
def _color_jitter(images, keys, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0):
    """color_jitter(brightness, contrast, saturation, hue): torchvision ColorJitter."""
    return random_color_jitter(images, keys, brightness, contrast, saturation, hue)


@register_op('random_resized_crop', check=_check_box)
def _random_resized_crop(images, keys, size=0, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """random_resized_crop(size, scale, ratio): size 0 = data.image_size (or the stored)."""
    return random_resized_crop(images, keys, size or images.shape[1], scale, ratio)


@register_op('normalize', stage='normalize', random=False)
def _normalize(images, keys, *, normalization, dtype=jnp.float32):
    """normalize: uint8 -> standardised floats with the data's ``Normalization``."""
    return normalize(images, normalization, dtype)


@register_op('cutout', stage='normalized', check=_positive)
def _cutout(images, keys, size):
    """cutout(size): zero a size x size square of each normalised image."""
    return random_cutout(images, keys, size)


@register_op('mixup', stage='mix', check=_positive)
def _mixup(images, keys, alpha, *, labels):
    """mixup(alpha): blend with the previous example, lam ~ Beta(alpha, alpha)."""
    return mix_with_partner(images, labels, keys, alpha, 0.0)


@register_op('cutmix', stage='mix', check=_positive)
def _cutmix(images, keys, alpha, *, labels):
    """cutmix(alpha): paste a box of the previous example, lam ~ Beta(alpha, alpha);
    with mixup in the same spec, each example takes one of the two (p = 1/2)."""
    return mix_with_partner(images, labels, keys, 0.0, alpha)


def _fold(keys: Array, salt: int) -> Array:
    return jax.vmap(lambda k: jax.random.fold_in(k, salt))(keys)


def augment(images: Array, keys: Array, steps: tuple[Step, ...], flips: Array | None = None,
            start: int = 0) -> Array:
    """Applies the pixel ``steps[start:]`` to uint8 images, one key per example.

    The first ``start`` steps were applied already (e.g. a crop done by the
    gather) but keep their keys.  Whole-pixel steps also run on pixel words
    (n, H, W, 1).  ``flips`` (per-example booleans) are the alternating flips.
    """
    crop_keys, flip_keys = first_crop_and_flip_keys(keys)
    first = {'crop': crop_keys, 'flip_lr': flip_keys}
    for i, step in enumerate(steps):
        step_keys = first.pop(step.name, None)
        if i < start:
            continue
        images = step(images, _fold(keys, 1000 + i) if step_keys is None else step_keys,
                      flips=flips)
    return images


def example_keys(data_key: Array, idx: Array, position: Array, epoch: Array,
                 preprocess: Preprocess) -> tuple[Array, Array | None]:
    """Per-example keys from (seed, epoch, position in the epoch), and airbench's
    alternating flips of the examples ``idx`` (None unless the spec asks).

    ``position`` is the step within the epoch: the keys do not depend on the
    device or host count, nor on whether the batch was gathered or streamed.
    """
    batch_size = idx.shape[0]
    epoch_key = jax.random.fold_in(jax.random.fold_in(data_key, 1), epoch)
    positions = position * batch_size + jnp.arange(batch_size)
    keys = jax.vmap(lambda p: jax.random.fold_in(epoch_key, p))(positions)
    flips = alternate_flips(data_key, idx, epoch) if preprocess.alternate_flips else None
    return keys, flips


def finish_batch(images: Array, labels: Array, keys: Array, preprocess: Preprocess,
                 dtype: Any = jnp.float32) -> dict[str, Array]:
    """The training batch from augmented uint8 images: ``normalize``, the steps after
    it (cutout), then the mixing (mixup/CutMix and their label weights)."""
    x = normalize(images, preprocess.normalization, dtype)
    for j, step in enumerate(preprocess.normalized_steps):
        x = step(x, _fold(keys, 2000 + j))
    mix = preprocess.mix_steps
    if not mix:
        return {'image': x, 'label': labels}
    if len(mix) == 1:
        return mix[0](x, _fold(keys, 3000), labels=labels)
    alpha = {s.name: s['alpha'] for s in mix}
    return mix_with_partner(x, labels, _fold(keys, 3000), alpha['mixup'], alpha['cutmix'])


def augment_batch(images: Array, labels: Array, idx: Array, position: Array, epoch: Array,
                  data_key: Array, preprocess: Preprocess, dtype: Any = jnp.float32
                  ) -> dict[str, Array]:
    """A training batch from uint8 images (N, H, W, C), the whole spec per example.
    ``idx`` are the examples' indices in the data set."""
    keys, flips = example_keys(data_key, idx, position, epoch, preprocess)
    images = augment(images, keys, preprocess.pixel_steps, flips)
    return finish_batch(images, labels, keys, preprocess, dtype)


def eval_images(images: Array, preprocess: Preprocess, dtype: Any = jnp.float32) -> Array:
    """uint8 eval or prediction images through a deterministic spec."""
    x = images
    for step in preprocess.steps:
        x = step(x, None, normalization=preprocess.normalization, dtype=dtype)
    return x
