"""Packed pixels: a pixel's channels in one word, and back."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxres.cpu import pixels


@pytest.mark.parametrize('channels', [1, 2, 3, 4])
def test_pixel_words_round_trip(channels):
    x = np.random.default_rng(channels).integers(0, 256, (3, 5, 5, channels), np.uint8)
    words = pixels.pack_pixels(x, padding=2)
    assert words.shape == (3, 5, 9) and words.dtype.itemsize == {1: 1, 2: 2}.get(channels, 4)
    unpacked = pixels.unpack_pixels(jnp.asarray(words), channels)
    np.testing.assert_array_equal(unpacked[:, :, 2:7], x)
    np.testing.assert_array_equal(words[:, :, :2], 0)


def test_more_than_four_channels_are_refused():
    with pytest.raises(ValueError, match='5 channels'):
        pixels.pack_pixels(np.zeros((1, 2, 2, 5), np.uint8))
