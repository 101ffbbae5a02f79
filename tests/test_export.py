"""--mode=export: ONNX Runtime, TensorFlow and the deserialised JAX program give
--mode=predict's probabilities; a broken or mismatched artifact is one line."""

import dataclasses
import importlib
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxres import export, inference, main, models, predict, train
from jaxres.data import datasets, preprocess

from conftest import random_dataset, tiny_config, tiny_width
from test_device_counts import CONFIGS

NAMES = ('ant', 'bee', 'cat', 'dog')
pytest.importorskip('jax2onnx', reason='the export extra (see .ci/run) is not installed')


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """A tiny model trained for 8 steps (with flip TTA at eval) and exported in all
    three formats; (workdir, data set, export dir)."""
    ds = dataclasses.replace(random_dataset(), class_names=NAMES)
    workdir = str(tmp_path_factory.mktemp('run'))
    train.train_and_evaluate(tiny_config(), workdir, ds)
    message = export.export_model(_config(), workdir)
    out = os.path.join(workdir, 'export')
    assert 'step 8' in message and out in message
    return workdir, ds, out


def _config(**overrides):
    return tiny_config(**{'eval.tta': True, **overrides})


def _predict(config, workdir, images, tmp_path, name):
    np.save(tmp_path / f'{name}.npy', images)
    config.predict.input, config.predict.output = (str(tmp_path / f'{name}.npy'),
                                                   str(tmp_path / f'{name}_p.npy'))
    line = predict.predict_to_file(config, workdir)
    return np.load(tmp_path / f'{name}_p.npy'), line


@pytest.mark.parametrize('fmt', export.FORMATS)
def test_each_format_gives_predicts_probabilities_at_two_batch_sizes(exported, tmp_path, fmt):
    workdir, ds, out = exported
    reference, _ = _predict(_config(), workdir, ds.eval_images, tmp_path, 'ckpt')
    model_path = os.path.join(out, export.FILES[fmt])
    loaded = export.load_exported(model_path)
    assert loaded.class_names == NAMES and loaded.input_shape == (8, 8, 3)
    for batch_size in (7, 40):  # a batch size other than any seen at export
        np.testing.assert_allclose(loaded.predict(ds.eval_images, batch_size), reference,
                                   atol=2e-6)
    # The same through --mode=predict with --config.predict.model.
    probs, line = _predict(_config(**{'predict.model': model_path}), '', ds.eval_images,
                           tmp_path, 'exported')
    assert f'exported model {model_path} ({fmt})' in line
    np.testing.assert_allclose(probs, reference, atol=2e-6)


def test_export_writes_class_names_and_what_it_holds(exported):
    _, _, out = exported
    with open(os.path.join(out, export.META_FILE)) as f:
        meta = json.load(f)
    assert meta['class_names'] == list(NAMES) and meta['input_shape'] == [None, 8, 8, 3]
    assert meta['step'] == 8 and meta['tta'] is True
    assert sorted(meta['files']) == sorted(export.FORMATS)
    for name in meta['files'].values():
        assert os.path.exists(os.path.join(out, name))


def test_onnx_file_passes_the_onnx_checker_with_a_free_batch(exported):
    import onnx  # pylint: disable=g-import-not-at-top
    _, _, out = exported
    model = onnx.load(os.path.join(out, 'model.onnx'))
    onnx.checker.check_model(model, full_check=True)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [8, 8, 3]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


@pytest.mark.parametrize('fmt', export.FORMATS)
def test_corrupt_artifact_is_refused_with_one_line(exported, tmp_path, fmt):
    _, _, out = exported
    bad = tmp_path / 'bad'
    shutil.copytree(out, bad)
    target = bad / export.FILES[fmt]
    if fmt == 'savedmodel':
        target = target / 'saved_model.pb'
    data = target.read_bytes()
    target.write_bytes(data[:len(data) // 3])  # a truncated copy
    with pytest.raises(export.ExportError, match='is not a usable .* model') as e:
        export.load_exported(str(bad / export.FILES[fmt]))
    assert '\n' not in str(e.value)


def test_artifact_of_another_input_shape_is_refused(exported, tmp_path):
    workdir, ds, out = exported
    loaded = export.load_exported(os.path.join(out, 'model.onnx'))
    with pytest.raises(export.ExportError, match=r'takes \(8, 8, 3\): resize them first'):
        loaded.predict(np.zeros((2, 16, 16, 3), np.uint8))
    # export.json from another export beside the file.
    mixed = tmp_path / 'mixed'
    shutil.copytree(out, mixed)
    meta = json.loads((mixed / export.META_FILE).read_text())
    meta['input_shape'] = [None, 32, 32, 3]
    (mixed / export.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(export.ExportError, match='come from different exports'):
        export.load_exported(str(mixed / 'model.onnx'))


def test_unknown_format_and_unknown_file_get_one_line(exported, tmp_path):
    workdir, _, _ = exported
    with pytest.raises(export.ExportError, match="choose from \\['jax', 'onnx', 'savedmodel'\\]"):
        export.export_model(_config(**{'export.formats': ('tflite',)}), workdir)
    (tmp_path / 'model.bin').write_bytes(b'x')
    with pytest.raises(export.ExportError, match='unknown kind'):
        export.load_exported(str(tmp_path / 'model.bin'))


def test_export_is_a_launch_mode(exported, monkeypatch, tmp_path):
    workdir, _, _ = exported
    config = _config(**{'export.formats': ('jax',), 'export.dir': str(tmp_path / 'e')})
    assert main.run(config, workdir, 'export') == 0
    assert os.listdir(tmp_path / 'e') and (tmp_path / 'e' / 'model.jaxexport').exists()


@pytest.mark.parametrize('name', CONFIGS)
def test_every_config_exports_to_onnx_exactly(name, tmp_path):
    """Each shipped model at tiny width (its stem, blocks, head, preprocessing and TTA):
    ONNX Runtime's probabilities equal the JAX function's."""
    config = tiny_width(importlib.import_module(f'configs.{name}').get_config())
    if not config.data.mean:  # from the data: any fixed statistics will do here
        config.data.mean, config.data.std = (0.5,) * 3, (0.25,) * 3
    num_classes, stored = datasets.KNOWN_SHAPES[config.dataset]
    shape = datasets.model_input_shape(stored, config.data.image_size)
    model = models.create_model(config.model, num_classes)
    variables = model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False)
    restored = inference.Inference(
        model, {k: variables.get(k, {}) for k in ('params', 'batch_stats')},
        preprocess.Preprocess.from_config(config, 'predict'), jnp.float32,
        bool(config.eval.tta), bool(config.eval.tta_translate), {}, 0, '')
    fn = restored.probabilities_fn()
    export.write_onnx(fn, shape, str(tmp_path / 'model.onnx'))
    images = np.random.default_rng(0).integers(0, 256, (3, *shape), dtype=np.uint8)
    onnx_probs = export.load_exported(str(tmp_path / 'model.onnx')).predict(images)
    np.testing.assert_allclose(onnx_probs, np.asarray(jax.jit(fn)(images)), atol=2e-5)
