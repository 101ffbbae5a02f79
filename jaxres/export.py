"""``--mode=export``: the trained classifier as files that other runtimes load.

From the checkpoint ``--mode=eval`` would use (``config.eval.checkpoint``, its
EMA weights where ``config.eval.ema``), one inference function

    uint8 images (B, H, W, C) -> float32 class probabilities (B, num_classes)

with the evaluation preprocessing inside it (normalisation, the resize to
``data.image_size``, flip/translate TTA where ``config.eval.tta``) and a batch
size B left free, is written in each of ``config.export.formats`` under
``config.export.dir`` (default ``WORKDIR/export``):

| format | file | loaded by |
| --- | --- | --- |
| ``jax`` | ``model.jaxexport`` | ``jax.export.deserialize`` (lowered for cpu and cuda) |
| ``onnx`` | ``model.onnx`` | ONNX Runtime and any ONNX consumer (``jax2onnx``) |
| ``savedmodel`` | ``saved_model/`` | TensorFlow / TF Serving: signature ``serving_default``, input ``images``, output ``probabilities`` (``jax2tf``) |

``export.json`` beside them holds the class names, the input shape, the step and
the files.  The model is exported in float32 with the plain XLA lowerings
whatever the training dtype and backend (``backend.*`` never change the
function).  For a data set of varying image sizes (ImageNet) the input is the
centre crop of ``data.image_size`` that evaluation feeds the model: the
shorter-side resize and crop stay with the caller.

``--mode=predict --config.predict.model=PATH`` labels images with any of the
three files (``load_exported``), so an artifact can be checked with jaxres.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxres import checkpointing, config_validation, inference, safe_io
from jaxres.data import datasets

FORMATS = ('jax', 'onnx', 'savedmodel')
FILES = {'jax': 'model.jaxexport', 'onnx': 'model.onnx', 'savedmodel': 'saved_model'}
# What each format needs beyond jaxres, for the one line a missing extra gets.
EXTRAS = {
    'onnx': ('jax2onnx', 'pip install -e ".[export]" && pip install --no-deps "jax2onnx==0.17.1"'),
    'savedmodel': ('tensorflow', 'pip install -e . (tensorflow-cpu is a jaxres dependency)'),
}
# The module that runs each format (for --mode=predict with an exported model).
RUNTIMES = {'jax': 'jax', 'onnx': 'onnxruntime', 'savedmodel': 'tensorflow'}
META_FILE = 'export.json'
INPUT_NAME, OUTPUT_NAME = 'images', 'probabilities'


class ExportError(datasets.DataError):
    """An export that cannot be written or an artifact that cannot be used; the
    message names the file or setting and the fix."""


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #
def export_model(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Runs ``--mode=export``; returns the line to print."""
    config_validation.validate(config)
    formats = tuple(config.export.formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f'config.export.formats={formats!r}: choose from {list(FORMATS)}, '
                          "e.g. --config.export.formats='(\"onnx\",)'.")
    for fmt in formats:
        check_extra(fmt)
    shape = input_image_shape(config, workdir)
    restored = inference.load_for_inference(config, workdir, shape, purpose='predict',
                                            portable=True)
    out = config.export.dir or os.path.join(workdir, 'export')
    os.makedirs(out, exist_ok=True)
    fn = restored.probabilities_fn()
    written = {}
    for fmt in formats:
        path = os.path.join(out, FILES[fmt])
        WRITERS[fmt](fn, shape, path)
        written[fmt] = FILES[fmt]
        logging.info('export: wrote %s', path)
    class_names = class_names_of(restored, config)
    meta = {'class_names': list(class_names), 'input_shape': [None, *shape],
            'input_dtype': 'uint8', 'output': 'float32 softmax probabilities (B, num_classes)',
            'step': restored.step, 'checkpoint': restored.checkpoint,
            'preprocessing': str(restored.pipeline), 'tta': restored.tta_flip,
            'dataset': config.dataset, 'files': written}
    safe_io.write_json(os.path.join(out, META_FILE), meta)
    return (f'exported checkpoint step {restored.step} ({restored.num_classes} classes, '
            f'input uint8 (B, {", ".join(map(str, shape))})) as '
            f'{", ".join(written.values())} to {os.path.abspath(out)}')


def check_extra(fmt: str) -> None:
    """One line naming the extra a format needs, before any work."""
    if fmt in EXTRAS:
        require(EXTRAS[fmt][0], f'export format {fmt!r}', EXTRAS[fmt][1])


def require(module: str, what: str, command: str) -> None:
    """``module`` importable, else one ExportError naming it and its install command."""
    try:
        __import__(module)
    except ImportError:
        raise ExportError(f'{what} needs {module}, which is not installed: {command}') from None


def input_image_shape(config: ml_collections.ConfigDict, workdir: str) -> tuple[int, int, int]:
    """(H, W, C) of the exported input: the trained images', or the ``data.image_size``
    crop where their size varied."""
    shape = inference.checkpoint_meta(config, workdir).get('image_shape') or ()
    if len(shape) != 3:
        raise checkpointing.CheckpointError('the checkpoint records no image shape; it was '
                                            'written by an older jaxres: train again.')
    h, w, c = shape
    if h is None or w is None:
        if not config.data.image_size:
            raise ExportError('the training images vary in size and config.data.image_size '
                              'is 0: set the input size, e.g. --config.data.image_size=224.')
        h = w = config.data.image_size
    return int(h), int(w), int(c)


def class_names_of(restored: inference.Inference, config: ml_collections.ConfigDict
                   ) -> tuple[str, ...]:
    from jaxres import predict  # pylint: disable=g-import-not-at-top  # (predict imports us)
    return predict.class_names_for(restored.meta, config, restored.num_classes)


def batch_polymorphic(shape: Sequence[int]) -> jax.ShapeDtypeStruct:
    """uint8 images (B, H, W, C) with B symbolic."""
    return jax.ShapeDtypeStruct(jax.export.symbolic_shape('B') + tuple(shape), jnp.uint8)


def write_jax(fn: Callable, shape: Sequence[int], path: str) -> None:
    """A ``jax.export`` program for cpu and cuda, serialised."""
    exported = jax.export.export(jax.jit(fn), platforms=('cpu', 'cuda'))(batch_polymorphic(shape))
    safe_io.write_atomic(path, bytes(exported.serialize()))


def write_onnx(fn: Callable, shape: Sequence[int], path: str) -> None:
    """ONNX (opset 23) through jax2onnx, checked with the onnx checker."""
    import onnx  # pylint: disable=g-import-not-at-top
    from jax2onnx import to_onnx  # pylint: disable=g-import-not-at-top
    model = to_onnx(fn, [batch_polymorphic(shape)], model_name='jaxres',
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    # jax2onnx 0.17 annotates some intermediates with their NHWC shape after moving the op
    # to NCHW; the annotations are optional, so drop them and let ONNX infer them.
    del model.graph.value_info[:]
    share_equal_initializers(model.graph)
    onnx.checker.check_model(model, full_check=True)
    safe_io.write_atomic(path, model.SerializeToString())


def share_equal_initializers(graph: Any) -> None:
    """Keeps one copy of each repeated constant: jax2onnx writes the weights once per
    model call, and TTA calls the model 2 or 6 times."""
    from onnx import numpy_helper  # pylint: disable=g-import-not-at-top
    first, rename, keep = {}, {}, []
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        key = (init.data_type, tuple(init.dims), array.tobytes())
        if key in first:
            rename[init.name] = first[key]
        else:
            first[key] = init.name
            keep.append(init)
    if not rename:
        return
    del graph.initializer[:]
    graph.initializer.extend(keep)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]


def write_savedmodel(fn: Callable, shape: Sequence[int], path: str) -> None:
    """A TF SavedModel (jax2tf, native serialisation for cpu and cuda) with the signature
    ``serving_default(images: uint8 (B, H, W, C)) -> {'probabilities'}``."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
    tf_fn = jax2tf.convert(fn, polymorphic_shapes=['(B, ...)'], with_gradient=False,
                           native_serialization_platforms=('cpu', 'cuda'))
    module = tf.Module()
    module.serve = tf.function(
        lambda images: {OUTPUT_NAME: tf_fn(images)}, autograph=False,
        input_signature=[tf.TensorSpec((None, *shape), tf.uint8, name=INPUT_NAME)])
    tmp = path + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    tf.saved_model.save(module, tmp, signatures={'serving_default': module.serve})
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


WRITERS = {'jax': write_jax, 'onnx': write_onnx, 'savedmodel': write_savedmodel}


# --------------------------------------------------------------------------- #
# Reading (predict with an exported model)
# --------------------------------------------------------------------------- #
@dataclasses.dataclass
class Exported:
    """An exported model loaded by the runtime of its format."""

    path: str
    fmt: str
    input_shape: tuple[int, ...]  # (H, W, C)
    class_names: tuple[str, ...]
    run: Callable[[np.ndarray], np.ndarray]

    def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """float32 probabilities of uint8 (N, H, W, C) images, ``batch_size`` at a time."""
        if tuple(images.shape[1:]) != self.input_shape:
            raise ExportError(f'the images are {tuple(images.shape[1:])} (H, W, C) but '
                              f'{self.path} takes {self.input_shape}: resize them first.')
        return np.concatenate([np.asarray(self.run(images[i:i + batch_size]), np.float32)
                               for i in range(0, len(images), batch_size)])

    def describe(self) -> str:
        return f'exported model {self.path} ({self.fmt})'


def format_of(path: str) -> str:
    """'jax' | 'onnx' | 'savedmodel' from the path, or one line saying what is accepted."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, 'saved_model.pb')):
            return 'savedmodel'
        raise ExportError(f'{path} is a directory without saved_model.pb; give a model.onnx, '
                          'a model.jaxexport or a saved_model/ directory written by '
                          '--mode=export.')
    suffix = os.path.splitext(path)[1]
    for fmt, name in FILES.items():
        if suffix and name.endswith(suffix):
            return fmt
    raise ExportError(f'config.predict.model={path!r}: unknown kind; give a .onnx, a '
                      '.jaxexport or a saved_model/ directory written by --mode=export.')


def load_exported(path: str) -> Exported:
    """Loads an exported model with its runtime; a corrupt or foreign file is one line."""
    if not os.path.exists(path):
        raise ExportError(f'config.predict.model={path!r} does not exist.')
    fmt = format_of(path)
    require(RUNTIMES[fmt], f'reading a {fmt} model', 'pip install -e ".[export]"')
    meta = _read_meta(path)
    try:
        run, shape = LOADERS[fmt](path)
    except Exception as e:  # pylint: disable=broad-except  # each runtime fails its own way
        raise ExportError(f'{path} is not a usable {fmt} model ({type(e).__name__}: '
                          f'{" ".join(str(e).split())[:200]}). Export it again with '
                          '--mode=export.') from None
    if meta and list(meta.get('input_shape', [None])[1:]) != list(shape):
        raise ExportError(f'{path} takes images {tuple(shape)} but {META_FILE} beside it says '
                          f'{tuple(meta["input_shape"][1:])}: the files come from different '
                          'exports; export again.')
    names = tuple(meta.get('class_names') or ())
    return Exported(path, fmt, tuple(shape), names, run)


def _read_meta(path: str) -> dict[str, Any]:
    """``export.json`` beside the file, or {} (class names are then indices)."""
    meta_path = os.path.join(os.path.dirname(os.path.abspath(path.rstrip('/'))), META_FILE)
    if not os.path.exists(meta_path):
        return {}
    try:
        with open(meta_path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ExportError(f'{meta_path} is not readable JSON ({e}); export again.') from None


def _load_jax(path: str) -> tuple[Callable, tuple[int, ...]]:
    with open(path, 'rb') as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    shape = tuple(int(d) for d in exported.in_avals[0].shape[1:])
    return jax.jit(exported.call), shape


def _load_onnx(path: str) -> tuple[Callable, tuple[int, ...]]:
    import onnxruntime as ort  # pylint: disable=g-import-not-at-top
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: shape-merge notes are not the user's
    session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    (inp,) = session.get_inputs()
    shape = tuple(int(d) for d in inp.shape[1:])
    return lambda images: session.run(None, {inp.name: images})[0], shape


def _load_savedmodel(path: str) -> tuple[Callable, tuple[int, ...]]:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    serve = tf.saved_model.load(path).signatures['serving_default']
    spec = serve.structured_input_signature[1][INPUT_NAME]
    shape = tuple(int(d) for d in spec.shape[1:])
    return lambda images: serve(**{INPUT_NAME: tf.constant(images)})[OUTPUT_NAME].numpy(), shape


LOADERS = {'jax': _load_jax, 'onnx': _load_onnx, 'savedmodel': _load_savedmodel}
