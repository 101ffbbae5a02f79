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
    ds = datasets.ImageDataset.from_arrays(
        rng.integers(0, 256, (256, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 256),
        rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 64))
    config = cifar10_speedrun_sgd.get_config()
    config.batch_size, config.eval_batch_size, config.model.whiten_samples = 64, 64, 100
    setup = train.TrainSetup.build(config, ds, sharding.make_data_mesh())
    state = setup.init_state()
    sample = preprocess.normalize(ds.train_images[:100], setup.train_pp.normalization)
    want = models.whitening_kernel(sample, 2)
    kernel = np.asarray(state.params['stem']['conv']['kernel'])  # the step donates the state
    np.testing.assert_allclose(kernel, want, rtol=1e-5, atol=1e-5)
    feed = setup.resident_input(resident.to_device(ds, setup.mesh, 64))
    bias_before = np.asarray(state.params['stem']['conv']['bias'])
    state, _ = setup.step_fn(feed.batch)(state, *feed.step_args(0, state))
    np.testing.assert_array_equal(state.params['stem']['conv']['kernel'], kernel)
    assert not np.array_equal(state.params['stem']['conv']['bias'], bias_before)  # trained
