"""Host input throughput: decode JPEG + RandomResizedCrop(224) + flip + batch (uint8).

    python benchmarks/streaming_decode.py [--data /tmp/streaming_decode_data]
        [--num_images 2000] [--workers 2] [--batch_size 64] [--rounds 3]
        [--warmup_batches 3] [--measure_batches 20] [--profile]

Compares, with the same worker count and batch size, in alternating fresh
processes (round r runs jaxres, torchvision, tf.data):

* jaxres: grain ``MapDataset`` -> ``batch`` whose ``batch_fn`` reads the files and
  calls ``host_ops.random_resized_crops`` (torchvision's box; TF's
  ``decode_and_crop_jpeg`` of the box at a DCT scale + bilinear, one TF call per
  batch and scale) and flips in numpy -> ``mp_prefetch``; batches are built
  inside the workers, so one array per batch crosses processes.
* torchvision: ``DataLoader`` over PIL ``Image.open().convert('RGB')``,
  ``RandomResizedCrop(224)``, ``RandomHorizontalFlip()``, ``PILToTensor()``.
* tf.data: ``tfds.load`` of the same JPEGs written once as a TFDS data set
  (TFRecord, bytes as they are; ``SkipDecoding``), then the Flax ImageNet
  example's crop (``extract_jpeg_shape`` + ``sample_distorted_bounding_box`` +
  ``decode_and_crop_jpeg``), ``tf.image.resize`` (bilinear),
  ``random_flip_left_right``, uint8.

The test images are CIFAR-10 JPEGs upscaled to ImageNet-like sizes (generated
once under --data).  Prints the CPU, one JSON line per run, and a summary line
with medians and the ratios jaxres/torchvision and jaxres/tf.data.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from jaxres.data import host_ops  # noqa: E402

LOADERS = ('jaxres', 'torchvision', 'tf.data')


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (empty where there is none)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return ''


def make_data(args: argparse.Namespace) -> list[str]:
    """Writes (once) ``num_images`` ImageNet-sized JPEGs under --data; returns their paths.

    CIFAR-10 train images (32x32) are upscaled bicubically to a width drawn
    uniformly from [min_width, max_width] and a log-uniform aspect ratio in
    [3/4, 4/3], get Gaussian noise (sigma --noise) so that JPEG sizes are like
    photographs' rather than like smooth upscales, and are saved at quality 90.
    """
    from PIL import Image

    manifest = os.path.join(args.data, 'manifest.json')
    spec = {'num_images': args.num_images, 'min_width': args.min_width, 'max_width': args.max_width,
            'noise': args.noise, 'seed': 0, 'quality': 90}
    if os.path.exists(manifest):
        with open(manifest) as f:
            info = json.load(f)
        if info['spec'] == spec:
            return [os.path.join(args.data, p) for p in info['files']]
    os.makedirs(args.data, exist_ok=True)
    shutil.rmtree(os.path.join(args.data, 'tfds'), ignore_errors=True)  # made from the old files
    rng = np.random.default_rng(0)
    files, sizes, nbytes = [], [], []
    with tarfile.open(args.source) as tar:
        for member in tar:
            if len(files) == args.num_images:
                break
            if not (member.isfile() and member.name.startswith('train/') and member.name.endswith('.jpg')):
                continue
            small = Image.open(io.BytesIO(tar.extractfile(member).read())).convert('RGB')
            width = int(rng.integers(args.min_width, args.max_width + 1))
            height = int(round(width / np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))))
            big = np.asarray(small.resize((width, height), Image.BICUBIC), dtype=np.float32)
            big = big + rng.normal(0.0, args.noise, big.shape).astype(np.float32)
            name = f'{len(files):05d}.jpg'
            path = os.path.join(args.data, name)
            Image.fromarray(big.clip(0, 255).astype(np.uint8)).save(path, quality=90)
            files.append(name)
            sizes.append((width, height))
            nbytes.append(os.path.getsize(path))
    if len(files) < args.num_images:
        raise SystemExit(f'{args.source} holds only {len(files)} train JPEGs')
    w, h = np.array(sizes).T
    info = {'spec': spec, 'files': files,
            'stats': {'mean_width': float(w.mean()), 'mean_height': float(h.mean()),
                      'min_size': [int(w.min()), int(h.min())], 'max_size': [int(w.max()), int(h.max())],
                      'mean_kib': float(np.mean(nbytes) / 1024)}}
    with open(manifest, 'w') as f:
        json.dump(info, f)
    return [os.path.join(args.data, p) for p in files]


def _read(path: str) -> bytes:
    with open(path, 'rb') as f:
        return f.read()


class ReadCropFlip:
    """grain ``batch_fn``: [(index, file path)] -> uint8 (N, size, size, 3), each image
    RandomResizedCrop'd (``host_ops.random_resized_crops``, one call per
    batch as in ``streaming.HostOps``) and flipped half the time.

    A plain picklable callable, so that the module need not import grain, which
    its spawned workers re-import.
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed

    def __call__(self, items: list[tuple[int, str]]) -> np.ndarray:
        data = [_read(path) for _, path in items]
        rngs = [np.random.default_rng([self.seed, index]) for index, _ in items]
        images = host_ops.random_resized_crops(data, rngs, self.size)
        flip = np.array([rng.random() < 0.5 for rng in rngs])
        images[flip] = images[flip, :, ::-1]
        return images


def jaxres_batches(paths: list[str], args: argparse.Namespace):
    import grain
    from absl import flags

    # grain reads absl flags in mp_prefetch; this script parses argparse only.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    ds = (grain.MapDataset.source(list(enumerate(paths)))
          .batch(args.batch_size, drop_remainder=True, batch_fn=ReadCropFlip(args.size, args.seed))
          # Each element is a whole batch: one thread per worker keeps the
          # worker count = process count, and a short buffer bounds memory.
          .to_iter_dataset(grain.ReadOptions(num_threads=args.grain_threads, prefetch_buffer_size=2))
          .mp_prefetch(grain.MultiprocessingOptions(num_workers=args.workers, per_worker_buffer_size=2)))
    return iter(ds), lambda batch: batch


class TorchFiles:
    """torch Dataset: path -> PIL RGB -> transform."""

    def __init__(self, paths: list[str], size: int):
        self.paths = paths
        self.size = size
        self.transform = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        if self.transform is None:
            from jaxres.tools.torch_ports import torchvision_transforms
            T = torchvision_transforms()
            self.transform = T.Compose([T.RandomResizedCrop(self.size), T.RandomHorizontalFlip(), T.PILToTensor()])
        return self.transform(Image.open(self.paths[i]).convert('RGB'))


def torchvision_batches(paths: list[str], args: argparse.Namespace):
    import torch

    from jaxres.tools.torch_ports import torchvision_transforms
    torchvision_transforms()
    torch.manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(TorchFiles(paths, args.size), batch_size=args.batch_size,
                                         num_workers=args.workers, drop_last=True)
    return iter(loader), lambda batch: batch.numpy()


def make_tfds(paths: list[str], args: argparse.Namespace) -> str:
    """Writes (once) the JPEGs as a TFRecord TFDS data set under --data; returns its data_dir."""
    import tensorflow_datasets as tfds

    data_dir = os.path.join(args.data, 'tfds')
    builder_dir = os.path.join(data_dir, 'decode_bench', '1.0.0')
    if not os.path.exists(os.path.join(builder_dir, 'dataset_info.json')):
        tfds.dataset_builders.store_as_tfds_dataset(
            name='decode_bench', version='1.0.0', data_dir=data_dir, file_format='tfrecord',
            features=tfds.features.FeaturesDict({'image': tfds.features.Image(encoding_format='jpeg')}),
            split_datasets={'train': [(i, {'image': p}) for i, p in enumerate(paths)]},
            disable_shuffling=True)
    return data_dir


def tfdata_batches(paths: list[str], args: argparse.Namespace):
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    import tensorflow as tf
    import tensorflow_datasets as tfds

    tf.random.set_seed(args.seed)
    size = args.size

    def crop(example):
        # Flax ImageNet example, _decode_and_random_crop / distorted_bounding_box_crop.
        data = example['image']
        shape = tf.image.extract_jpeg_shape(data)
        begin, crop_size, _ = tf.image.sample_distorted_bounding_box(
            shape, bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
            min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
            max_attempts=10, use_image_if_no_bounding_boxes=True)
        offset_y, offset_x, _ = tf.unstack(begin)
        target_h, target_w, _ = tf.unstack(crop_size)
        image = tf.io.decode_and_crop_jpeg(data, tf.stack([offset_y, offset_x, target_h, target_w]), channels=3)
        image = tf.image.resize(image, [size, size])
        image = tf.image.random_flip_left_right(image)
        return tf.saturate_cast(tf.round(image), tf.uint8)

    options = tf.data.Options()
    options.threading.private_threadpool_size = args.workers
    ds = tfds.load('decode_bench', data_dir=make_tfds(paths, args), split='train',
                   decoders={'image': tfds.decode.SkipDecoding()})
    ds = (ds.map(crop, num_parallel_calls=args.workers)
          .batch(args.batch_size, drop_remainder=True).prefetch(2).with_options(options))
    return iter(ds), lambda batch: batch.numpy()


def run_one(loader: str, args: argparse.Namespace) -> dict:
    """Times one loader in this process: warm-up batches excluded."""
    paths = make_data(args)
    make = {'jaxres': jaxres_batches, 'torchvision': torchvision_batches, 'tf.data': tfdata_batches}[loader]
    it, to_numpy = make(paths, args)
    for _ in range(args.warmup_batches):
        to_numpy(next(it))
    start = time.perf_counter()
    for _ in range(args.measure_batches):
        batch = to_numpy(next(it))
    elapsed = time.perf_counter() - start
    shape = tuple(batch.shape)
    if loader == 'torchvision':
        shape = (shape[0], shape[2], shape[3], shape[1])  # NCHW from PILToTensor
    assert batch.dtype == np.uint8 and shape == (args.batch_size, args.size, args.size, 3), (batch.dtype, shape)
    if hasattr(it, 'close'):
        it.close()
    images = args.measure_batches * args.batch_size
    return {'loader': loader, 'images': images, 'seconds': round(elapsed, 3),
            'images_per_s': round(images / elapsed, 1), 'workers': args.workers, 'batch_size': args.batch_size}


def profile(args: argparse.Namespace) -> None:
    """Single-process cost per image of each stage (one core), to see where time goes."""
    from PIL import Image

    paths = make_data(args)[:args.profile_images]
    blobs = []
    for p in paths:
        with open(p, 'rb') as f:
            blobs.append(f.read())
    from jaxres.tools.torch_ports import torchvision_transforms
    T = torchvision_transforms()
    tv = T.Compose([T.RandomResizedCrop(args.size), T.RandomHorizontalFlip(), T.PILToTensor()])
    rng = np.random.default_rng(0)

    def full_decode(b):
        return np.asarray(Image.open(io.BytesIO(b)).convert('RGB'))

    stages = {
        'read_file': lambda i: _read(paths[i]),
        'decode_full': lambda i: full_decode(blobs[i]),
        'jaxres_crop_one_by_one': lambda i: host_ops.random_resized_crop(blobs[i], rng, args.size),
        'torchvision_decode_crop_flip': lambda i: tv(Image.open(io.BytesIO(blobs[i])).convert('RGB')),
        'np_stack_batch': lambda i: np.stack([np.zeros((args.size, args.size, 3), np.uint8)] * args.batch_size),
    }
    for name, fn in stages.items():
        fn(0)
        start = time.perf_counter()
        for i in range(len(blobs)):
            fn(i)
        per = (time.perf_counter() - start) / len(blobs)
        print(json.dumps({'profile': name, 'ms_per_call': round(per * 1e3, 3),
                          'calls_per_s_one_core': round(1 / per, 1)}), flush=True)
    # The batched call the streaming input makes (one TF call per batch and scale).
    n = args.batch_size
    batched = lambda k: host_ops.random_resized_crops(  # noqa: E731
        blobs[k:k + n], [np.random.default_rng([0, j]) for j in range(k, k + n)], args.size)
    batched(0)
    starts = range(0, len(blobs) - n + 1, n)
    start = time.perf_counter()
    for k in starts:
        batched(k)
    per = (time.perf_counter() - start) / (len(starts) * n)
    print(json.dumps({'profile': 'jaxres_crop_batched', 'ms_per_call': round(per * 1e3, 3),
                      'calls_per_s_one_core': round(1 / per, 1)}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', default='/tmp/streaming_decode_data', help='cache dir of the generated JPEGs')
    parser.add_argument('--source', default=os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'cifar10-jpeg.tar.gz'))
    parser.add_argument('--num_images', type=int, default=2000)
    parser.add_argument('--min_width', type=int, default=300)
    parser.add_argument('--max_width', type=int, default=640)
    parser.add_argument('--noise', type=float, default=8.0, help='Gaussian noise sigma added before JPEG')
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--batch_size', type=int, default=64)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--warmup_batches', type=int, default=3)
    parser.add_argument('--measure_batches', type=int, default=20)
    parser.add_argument('--grain_threads', type=int, default=1, help='grain ReadOptions.num_threads per worker')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--loaders', default=','.join(LOADERS))
    parser.add_argument('--profile', action='store_true', help='also time each stage in one process')
    parser.add_argument('--profile_images', type=int, default=200)
    parser.add_argument('--run', choices=LOADERS, help=argparse.SUPPRESS)  # one run, in this process
    args = parser.parse_args()

    if args.run:
        print(json.dumps(run_one(args.run, args)), flush=True)
        return 0

    needed = (args.warmup_batches + args.measure_batches) * args.batch_size
    if needed > args.num_images:
        parser.error(f'a run reads {needed} images; --num_images is {args.num_images}')
    print(json.dumps({'cpu': cpu_model(), 'cores': os.cpu_count()}), flush=True)
    make_tfds(make_data(args), args)
    with open(os.path.join(args.data, 'manifest.json')) as f:
        print(json.dumps({'data': args.data, **json.load(f)['stats'], 'num_images': args.num_images}), flush=True)
    if args.profile:
        profile(args)

    # Fresh process per run: no loader inherits another's threads, imports or caches.
    passthrough = [a for a in sys.argv[1:] if a != '--profile']
    results: dict[str, list[float]] = {name: [] for name in args.loaders.split(',')}
    for _ in range(args.rounds):
        for name in results:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), *passthrough, '--run', name],
                                 capture_output=True, text=True)
            if out.returncode:
                sys.stderr.write(out.stderr)
                raise SystemExit(f'{name} run failed')
            line = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(line), flush=True)
            results[name].append(line['images_per_s'])

    medians = {name: statistics.median(v) for name, v in results.items()}
    summary = {'summary': 'median images/s', **{k: round(v, 1) for k, v in medians.items()}}
    for other in ('torchvision', 'tf.data'):
        if 'jaxres' in medians and other in medians:
            summary[f'jaxres/{other}'] = round(medians['jaxres'] / medians[other], 3)
    summary.update(workers=args.workers, batch_size=args.batch_size, images_per_run=args.measure_batches * args.batch_size)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
