"""The CPU PyTorch port of airbench94_muon (jaxres/tools/airbench_ref.py)."""

import math

import numpy as np
import pytest

torch = pytest.importorskip('torch')

from jaxres.tools import airbench_ref as ar  # pylint: disable=g-import-not-at-top


def test_parameter_count_matches_the_speedrun_net():
    counts = ar.parameter_counts(ar.CifarNet())
    # jaxres's bias-only BatchNorm has no weights; airbench's are frozen at one.
    assert counts['parameters_without_bn_weights'] == 1_971_640
    assert counts['parameters'] == 1_971_640 + 1_152
    assert counts['bn_unit_weights'] == 1_152
    assert counts['matches_jaxres']
    # Trainable: all but the frozen whitening kernel (24 x 3 x 2 x 2) and the BN weights.
    assert counts['trainable_parameters'] == 1_971_640 - 288


def test_whitening_decorrelates_its_sample():
    torch.manual_seed(0)
    # Correlated channels and pixels: a per-image colour plus a blurred noise field.
    noise = torch.rand(64, 3, 33, 33)
    images = 0.5 * torch.rand(64, 3, 1, 1) + 0.5 * (noise[..., 1:, 1:] + noise[..., :-1, :-1]) / 2
    x = ar.normalize(images)
    model = ar.CifarNet()
    model.init_whiten(x)
    out = torch.nn.functional.conv2d(x, model.whiten.weight[:12])  # no bias; 12 directions
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    second_moment = flat.T @ flat / len(flat)  # airbench's (uncentred) patch covariance
    np.testing.assert_allclose(second_moment.numpy(), np.eye(12), atol=0.02)
    # The other 12 filters are the negatives.
    torch.testing.assert_close(model.whiten.weight[12:], -model.whiten.weight[:12])


def test_newton_schulz_nearly_orthogonalises():
    torch.manual_seed(0)
    for shape in [(64, 216), (216, 64)]:
        g = torch.randn(*shape)
        x = ar.zeropower_via_newtonschulz5(g).float()
        assert x.shape == g.shape
        s = torch.linalg.svdvals(x)
        assert s.min() > 0.4 and s.max() < 1.6  # airbench: roughly Uniform(0.5, 1.5)
        # The same singular vectors as g: U^T x V is nearly diagonal.
        u, _, vh = torch.linalg.svd(g, full_matrices=False)
        d = u.T @ x @ vh.T
        assert (d - torch.diag(torch.diag(d))).abs().max() < 0.05


def _id_images(n):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8), np.arange(n)


def _epoch(loader):
    """One epoch's images, put back in example order (the labels are example ids)."""
    images, ids = map(torch.cat, zip(*loader))
    return images[torch.argsort(ids)], ids


def test_loader_flips_every_image_on_alternate_epochs():
    images, ids = _id_images(40)
    torch.manual_seed(0)
    loader = ar.CifarLoader(images, ids, train=True, batch_size=8, aug=dict(flip=True))
    epochs = [_epoch(loader) for _ in range(3)]
    for x, seen in epochs:
        assert sorted(seen.tolist()) == list(range(40))  # a shuffled permutation, none dropped
    e0, e1, e2 = (x for x, _ in epochs)
    torch.testing.assert_close(e1, e0.flip(-1))
    torch.testing.assert_close(e2, e0)
    # Epoch 0 already mirrors a random part of the images (airbench's pre-flip).
    norm = ar.normalize(loader.images)
    flipped = [not torch.equal(e0[i], norm[i]) for i in range(40)]
    assert 5 < sum(flipped) < 35
    for i in range(40):
        assert torch.equal(e0[i], norm[i].flip(-1) if flipped[i] else norm[i])


def test_loader_translates_within_two_pixels_and_drops_the_last_batch():
    images, ids = _id_images(42)
    torch.manual_seed(1)
    loader = ar.CifarLoader(images, ids, train=True, batch_size=8,
                            aug=dict(flip=True, translate=2))
    assert len(loader) == 5
    x, seen = _epoch(loader)
    assert len(seen) == 40
    padded = loader.proc_images['pad']
    assert padded.shape[-2:] == (36, 36)
    shifts = set()
    for j, i in enumerate(seen.sort().values.tolist()):
        windows = [(sy, sx) for sy in range(5) for sx in range(5)
                   if torch.equal(x[j], padded[i, :, sy:sy + 32, sx:sx + 32])]
        assert windows, f'image {i} is no window of its padded copy'
        shifts.update(windows)
    assert len(shifts) > 5


def _toy_task(n=64, classes=4):
    """Images whose class is their mean colour, under noise: learnable in a few steps."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % classes
    colours = rng.uniform(0, 255, size=(classes, 3))
    noise = rng.normal(0, 40, size=(n, 32, 32, 3))
    return np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8), labels


def test_tiny_training_run_learns():
    images, labels = _toy_task()
    records = []
    run = ar.train(images, labels, images[:32], labels[:32], seed=0, epochs=2,
                   batch_size=16, whiten_samples=16, log=records.append)
    assert records == run['epochs'] and len(records) == 2
    assert run['steps'] == 8 and run['whiten_bias_train_steps'] == 12
    losses = [r['train_loss'] for r in records]
    assert all(math.isfinite(v) for v in losses)
    assert losses[1] < losses[0]
    assert losses[0] < math.log(10)  # below chance even on average over epoch 1
    assert records[-1]['train_acc'] > 0.5
    assert run['tta_test_acc'] > 0.5
    assert run['parameters']['matches_jaxres']
