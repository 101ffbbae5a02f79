"""Packed pixels: a uint8 image's channels in one unsigned word per pixel.

On XLA:CPU a crop of the resident training set is then one gather of whole
rows of words, which vectorises, where a gather of uint8 channels does not
(benchmarks/RESULTS.md); ``backend.choose`` turns it on for CPU only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


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
