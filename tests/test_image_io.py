"""image_io: the one image check, CIFAR rows, image folders and channel statistics."""

import numpy as np
import pytest
from PIL import Image

from jaxres.data import DataError, image_io


def test_as_uint8_nhwc_adds_the_channel_and_converts_floats_only_when_asked():
    gray = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert image_io.as_uint8_nhwc(gray, 'x').shape == (2, 3, 3, 1)
    unit = np.full((1, 2, 2, 3), 0.5, np.float32)
    np.testing.assert_array_equal(image_io.as_uint8_nhwc(unit, 'x', floats=True), 128)
    np.testing.assert_array_equal(image_io.as_uint8_nhwc(unit * 255, 'x', floats=True), 128)
    with pytest.raises(image_io.ImageError, match='dtype float32; expected uint8 images'):
        image_io.as_uint8_nhwc(unit, 'x')


@pytest.mark.parametrize('shape', [(0, 4, 4, 3), (2, 4, 4, 2), (2, 48)])
def test_as_uint8_nhwc_refuses_empty_or_odd_shapes_as_a_data_error(shape):
    with pytest.raises(DataError, match=r'has shape .*; expected \(N, H, W\)'):
        image_io.as_uint8_nhwc(np.zeros(shape, np.uint8), 'x')


def test_rows_to_images_reads_cifar_channel_first_rows():
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    rows = images.transpose(0, 3, 1, 2).reshape(3, -1)
    got = image_io.rows_to_images(rows, 'batch')
    np.testing.assert_array_equal(got, images)
    assert got.flags['C_CONTIGUOUS']
    with pytest.raises(image_io.ImageError, match='are not 3 square channels'):
        image_io.rows_to_images(rows[:, :100], 'batch')


def test_channel_stats_equal_float64_sums_and_floor_a_constant_channel():
    images = np.random.default_rng(1).integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    images[..., 2] = 40  # constant: std 0 would divide by zero when normalising
    mean, std = image_io.channel_stats(images)
    x = images.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std[:2], x.std(0)[:2], rtol=1e-12)
    assert std[2] == pytest.approx(1 / 255)


def test_image_folder_is_read_in_sorted_path_order(tmp_path):
    for name, value in (('b/2.png', 20), ('a/1.png', 10), ('c.jpg', 30)):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(tmp_path / name, quality=100)
    (tmp_path / 'notes.txt').write_text('not an image')
    assert image_io.image_files(str(tmp_path)) == ['a/1.png', 'b/2.png', 'c.jpg']
    images = image_io.read_images(str(tmp_path))
    assert images.shape == (3, 4, 4, 3)
    np.testing.assert_allclose(images[:, 0, 0, 0], [10, 20, 30], atol=1)
