"""configs/cifar10_speedrun*.py: the Muon recipe at full size (issue 8; the SGD one trains
at tiny width in test_configs.py and lowers at full size in test_accelerators.py), the
whitening stem; no accuracy asserted."""

import jax
import numpy as np

from configs import cifar10_speedrun, cifar10_speedrun_sgd
from jaxres import sharding, train
from jaxres.data import datasets, preprocess


def _cifar_shaped_random(n_train=2048):
    rng = np.random.default_rng(0)
    return datasets.ImageDataset.from_arrays(
        rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 10, n_train),
        rng.integers(0, 256, (1000, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 1000))


def test_speedrun_config_trains_and_evaluates(tmp_path, monkeypatch):
    # Two steps of issue 8's recipe exactly as configured (Muon + SGD groups,
    # batch 2000 as 4 micro-batches, frozen stem, TTA), on 4 of the 8 fake
    # devices: 2000 splits into 4 micro-batches over 4 devices, not over 8.
    full_mesh = sharding.make_data_mesh
    monkeypatch.setattr(sharding, 'make_data_mesh', lambda: full_mesh(jax.devices()[:4]))
    ds = _cifar_shaped_random()
    config = cifar10_speedrun.get_config()
    config.num_train_steps = 2
    config.checkpoint.async_save = False
    results = train.train_and_evaluate(config, str(tmp_path), ds)
    assert results['step'] == 2 and np.isfinite(results['loss'])


def test_whitening_stem_is_computed_from_the_data_and_stays_frozen():
    from jaxres import models, sharding
    from jaxres.data import resident
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 64)  # stored class by class, like a prepared image folder
    images = rng.integers(0, 256, (256, 32, 32, 3), dtype=np.uint8)
    images[labels == 0] //= 4  # the first class is darker: a sample of it alone differs
    ds = datasets.ImageDataset.from_arrays(
        images, labels,
        rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), rng.integers(0, 4, 64))
    config = cifar10_speedrun_sgd.get_config()
    config.batch_size, config.eval_batch_size, config.model.whiten_samples = 64, 64, 100
    setup = train.TrainSetup.build(config, ds, sharding.make_data_mesh())
    state = setup.init_state()
    # From 100 images spread over the split (every class), not the first 100 (one class).
    picked = datasets.spread_sample(256, 100)
    assert set(labels[picked]) == {0, 1, 2, 3} and set(labels[:100]) == {0, 1}
    sample = preprocess.normalize(ds.train_images[picked], setup.train_pp.normalization)
    want = models.whitening_kernel(sample, 2)
    kernel = np.asarray(state.params['stem']['conv']['kernel'])  # the step donates the state
    np.testing.assert_allclose(kernel, want, rtol=1e-5, atol=1e-5)
    first = preprocess.normalize(ds.train_images[:100], setup.train_pp.normalization)
    assert not np.allclose(kernel, models.whitening_kernel(first, 2), rtol=1e-3, atol=1e-3)
    feed = setup.resident_input(resident.to_device(ds, setup.mesh, 64))
    bias_before = np.asarray(state.params['stem']['conv']['bias'])
    state, _ = setup.step_fn(feed.batch)(state, *feed.step_args(0, state))
    np.testing.assert_array_equal(state.params['stem']['conv']['kernel'], kernel)
    assert not np.array_equal(state.params['stem']['conv']['bias'], bias_before)  # trained


def test_streamed_input_computes_the_stem_from_the_resident_inputs_images(monkeypatch):
    from jaxres import sharding
    from jaxres.data import streaming
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(4), 40)
    ds = datasets.ImageDataset.from_arrays(
        rng.integers(0, 256, (160, 32, 32, 3), dtype=np.uint8), labels,
        rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), rng.integers(0, 4, 8))
    monkeypatch.setattr(datasets, 'open_sources', lambda config, info, ds_=None: (
        datasets.ArraySource(ds.train_images, ds.train_labels), None))
    config = cifar10_speedrun_sgd.get_config()
    config.batch_size, config.eval_batch_size, config.model.whiten_samples = 32, 32, 50
    sample = train.stem_sample(config, ds.info(config.dataset))
    np.testing.assert_array_equal(sample, ds.train_images[datasets.spread_sample(160, 50)])
    assert streaming.stem_sample(config, ds.info(config.dataset), 0) is None
    mesh = sharding.make_data_mesh()
    streamed = train.TrainSetup.build(config, ds.info(config.dataset), mesh,
                                      sample_images=sample)
    kept = train.TrainSetup.build(config, ds, mesh)
    np.testing.assert_array_equal(streamed.data_params['stem']['conv']['kernel'],
                                  kept.data_params['stem']['conv']['kernel'])
