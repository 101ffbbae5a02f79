"""--mode=predict on the three input kinds, against direct model.apply and --mode=eval."""

import csv
import dataclasses
import os
import pickle

import jax
import numpy as np
import pytest
from PIL import Image

from jaxres import checkpointing, main, models, predict, sharding, train
from jaxres.data import DataError, image_io, preprocess

from conftest import random_dataset, tiny_config

NAMES = ('ant', 'bee', 'cat', 'dog')


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A tiny model trained for 8 steps; (workdir, data set)."""
    ds = dataclasses.replace(random_dataset(), class_names=NAMES)
    workdir = str(tmp_path_factory.mktemp('run'))
    train.train_and_evaluate(tiny_config(), workdir, ds)
    return workdir, ds


def _config(src, out, **overrides):
    return tiny_config(**{'predict.input': str(src), 'predict.output': str(out), **overrides})


def _direct_probs(workdir, config, images):
    """Softmax of model.apply on normalized images, with nothing of predict.py."""
    manager = checkpointing.create_manager(checkpointing.checkpoint_dir(workdir), read_only=True)
    mesh = sharding.make_data_mesh()
    ds = random_dataset()
    setup = train.TrainSetup.build(config, ds, mesh)
    state = checkpointing.restore_state(manager, manager.latest_step(), setup.abstract_state())
    model = models.create_model(config.model, 4)
    x = preprocess.eval_images(images, preprocess.Preprocess.from_config(config, 'eval'))
    logits = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, x,
                         train=False)
    return np.asarray(jax.nn.softmax(logits))


def test_npy_gives_model_probabilities_and_eval_accuracy(trained, tmp_path, monkeypatch):
    workdir, ds = trained
    src, out = tmp_path / 'x.npy', tmp_path / 'p.npy'
    np.save(src, ds.eval_images)
    config = _config(src, out)
    message = predict.predict_to_file(config, workdir)
    assert str(out) in message and 'step 8' in message
    probs = np.load(out)
    assert probs.shape == (40, 4) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(probs, _direct_probs(workdir, config, ds.eval_images), atol=1e-6)

    monkeypatch.setattr(main.datasets, 'load_dataset', lambda cfg: ds)
    evaluated = main.evaluate_checkpoint(tiny_config(), workdir)
    accuracy = np.mean(np.argmax(probs, -1) == ds.eval_labels)
    assert accuracy == evaluated['accuracy']


def test_any_count_on_any_device_count(trained, tmp_path):
    """13 images (not a multiple of 8 devices or of the batch) -> the same 13 rows."""
    workdir, ds = trained
    np.save(tmp_path / 'all.npy', ds.eval_images)
    np.save(tmp_path / 'few.npy', ds.eval_images[:13])
    predict.predict_to_file(_config(tmp_path / 'all.npy', tmp_path / 'all_p.npy'), workdir)
    predict.predict_to_file(_config(tmp_path / 'few.npy', tmp_path / 'few_p.npy',
                                    eval_batch_size=8), workdir)
    np.testing.assert_allclose(np.load(tmp_path / 'few_p.npy'),
                               np.load(tmp_path / 'all_p.npy')[:13], atol=1e-6)


def test_image_folder_in_sorted_path_order(trained, tmp_path):
    workdir, ds = trained
    folder = tmp_path / 'images'
    order = []
    for i, img in enumerate(ds.eval_images):
        sub = folder / ('b' if i % 3 else 'a')  # subfolders: sorted by relative path
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(sub / f'{i:03d}.png')
        order.append((f'{sub.name}/{i:03d}.png', i))
    (folder / 'notes.txt').write_text('not an image: ignored')
    expected_rows = [i for _, i in sorted(order)]
    assert image_io.image_files(str(folder)) == [p for p, _ in sorted(order)]

    np.save(tmp_path / 'x.npy', ds.eval_images)
    predict.predict_to_file(_config(tmp_path / 'x.npy', tmp_path / 'ref.npy'), workdir)
    predict.predict_to_file(_config(folder, tmp_path / 'p.npy'), workdir)
    np.testing.assert_allclose(np.load(tmp_path / 'p.npy'),
                               np.load(tmp_path / 'ref.npy')[expected_rows], atol=1e-6)


def test_cifar_pickle_batch_and_csv_output(trained, tmp_path):
    workdir, ds = trained
    rows = ds.eval_images.transpose(0, 3, 1, 2).reshape(len(ds.eval_images), -1)  # CHW rows
    src = tmp_path / 'unlabeled_batch'
    with open(src, 'wb') as f:  # as the CIFAR archives: bytes keys, protocol 2
        pickle.dump({b'batch_label': b'unlabeled', b'data': rows}, f, protocol=2)
    np.save(tmp_path / 'x.npy', ds.eval_images)
    predict.predict_to_file(_config(tmp_path / 'x.npy', tmp_path / 'ref.npy'), workdir)
    ref = np.load(tmp_path / 'ref.npy')
    predict.predict_to_file(_config(src, tmp_path / 'p.npy'), workdir)
    np.testing.assert_allclose(np.load(tmp_path / 'p.npy'), ref, atol=1e-6)

    predict.predict_to_file(_config(src, tmp_path / 'p.csv'), workdir)
    with open(tmp_path / 'p.csv') as f:
        table = list(csv.reader(f))
    assert table[0] == ['index', 'label', 'class_name', 'confidence']
    assert len(table) == 41
    for i, (index, label, name, confidence) in enumerate(table[1:]):
        assert int(index) == i and int(label) == int(np.argmax(ref[i]))
        assert name == NAMES[int(label)]
        assert float(confidence) == pytest.approx(ref[i].max(), abs=1e-6)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_pickle_that_would_run_code_is_refused(trained, tmp_path, capsys):
    workdir, _ = trained
    marker = tmp_path / 'pwned'
    src = tmp_path / 'batch.pkl'
    src.write_bytes(pickle.dumps({'data': _RunsCode(marker)}))
    out = tmp_path / 'p.npy'
    with pytest.raises(image_io.ImageError, match='refusing to load posix.system'):
        predict.predict_to_file(_config(src, out), workdir)
    assert not marker.exists() and not out.exists()
    # Through the launcher: one 'error:' line, exit status 2.
    assert main.run(_config(src, out), workdir, 'predict') == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error:') and 'refusing' in err[0]


@pytest.mark.parametrize('kind, match', [
    ('float', 'dtype float32; expected uint8'),
    ('gray', r'model was trained on \(8, 8, 3\)'),
    ('big', r'holds images of shape \(16, 16, 3\)'),
    ('flat', r'shape \(5, 192\); expected \(N, H, W\)'),
    ('text_npy', 'is not a readable .npy array'),
    ('text_pkl', 'is not a pickle batch'),
    ('list_pkl', 'holds no dict with a "data" entry'),
    ('odd_rows', 'are not 3 square channels'),
    ('suffix', "unknown suffix '.txt'"),
    ('missing', 'does not exist'),
    ('empty_dir', 'holds no'),
    ('out_suffix', 'must end in .npy'),
])
def test_bad_input_gets_one_error_and_writes_nothing(trained, tmp_path, kind, match):
    workdir, ds = trained
    src = tmp_path / {'text_pkl': 'b.pkl', 'list_pkl': 'b.pkl', 'odd_rows': 'b.pkl',
                      'suffix': 'x.txt', 'empty_dir': 'images'}.get(kind, 'x.npy')
    out = tmp_path / ('p.json' if kind == 'out_suffix' else 'p.npy')
    good = ds.eval_images[:5]
    if kind in ('float', 'out_suffix'):
        np.save(src, good.astype(np.float32) if kind == 'float' else good)
    elif kind == 'gray':
        np.save(src, good[..., 0])
    elif kind == 'big':
        np.save(src, np.zeros((5, 16, 16, 3), np.uint8))
    elif kind == 'flat':
        np.save(src, good.reshape(5, -1))
    elif kind in ('text_npy', 'suffix', 'text_pkl'):
        src.write_text('hello')
    elif kind == 'list_pkl':
        src.write_bytes(pickle.dumps([1, 2, 3]))
    elif kind == 'odd_rows':
        src.write_bytes(pickle.dumps({'data': np.zeros((5, 100), np.uint8)}))
    elif kind == 'empty_dir':
        src.mkdir()
    # Bad images are image_io's ImageError, a bad output path predict's PredictError: both
    # DataErrors, which the launcher reports as one 'error:' line.
    with pytest.raises(DataError, match=match):
        predict.predict_to_file(_config(src, out), workdir)
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if '.tmp' in p]


def test_tta_predict_averages_the_mirror_image(trained, tmp_path):
    workdir, ds = trained
    np.save(tmp_path / 'x.npy', ds.eval_images)
    np.save(tmp_path / 'xf.npy', ds.eval_images[:, :, ::-1])
    for name in ('x', 'xf'):
        predict.predict_to_file(_config(tmp_path / f'{name}.npy', tmp_path / f'{name}_p.npy'),
                                workdir)
    predict.predict_to_file(_config(tmp_path / 'x.npy', tmp_path / 'tta.npy',
                                    **{'eval.tta': True}), workdir)
    expected = (np.load(tmp_path / 'x_p.npy') + np.load(tmp_path / 'xf_p.npy')) / 2
    np.testing.assert_allclose(np.load(tmp_path / 'tta.npy'), expected, atol=1e-6)
