"""inference: a checkpoint restored with its model, variables checked against the
config, and the preprocessing of the purpose; what eval, predict and export share."""

import jax
import numpy as np
import pytest

from jaxres import checkpointing, inference, train

from conftest import random_dataset, tiny_config


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    ds = random_dataset()
    workdir = str(tmp_path_factory.mktemp('run'))
    config = tiny_config(num_train_steps=4, **{'eval.tta': True})
    train.train_and_evaluate(config, workdir, ds)
    return workdir, ds, config


def test_the_latest_checkpoint_with_its_model_pipeline_and_meta(trained):
    workdir, ds, config = trained
    restored = inference.load_for_inference(config, workdir)
    assert restored.step == 4 and restored.num_classes == 4 and restored.tta_flip
    assert restored.meta['image_shape'] == list(ds.image_shape)
    assert restored.checkpoint.endswith('/4')
    probabilities = np.asarray(jax.jit(restored.probabilities_fn())(ds.eval_images[:5]))
    assert probabilities.shape == (5, 4)
    np.testing.assert_allclose(probabilities.sum(-1), 1, rtol=1e-5)
    portable = inference.load_for_inference(config, workdir, portable=True)
    np.testing.assert_allclose(jax.jit(portable.probabilities_fn())(ds.eval_images[:5]),
                               probabilities, atol=1e-5)


def test_a_config_whose_model_does_not_fit_is_named_with_the_fix(trained):
    workdir, _, config = trained
    wider = tiny_config(**{'model.stem_width': 16})
    with pytest.raises(checkpointing.CheckpointError) as e:
        inference.load_for_inference(wider, workdir)
    assert 'does not fit config.model for (8, 8, 3) images' in str(e.value)
    assert 'Use the --config the checkpoint was trained with.' in str(e.value)


def test_leaf_shapes_name_every_leaf_by_its_path():
    tree = {'params': {'head': {'kernel': np.zeros((8, 4)), 'bias': np.zeros(4)}}}
    assert inference.leaf_shapes(tree) == {"['params']['head']['bias']": (4,),
                                           "['params']['head']['kernel']": (8, 4)}
