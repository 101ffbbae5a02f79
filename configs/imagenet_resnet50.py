"""ResNet-50 on ImageNet: the Flax ImageNet example's recipe (25,557,032 parameters).

Model: ResNet-50 v1.5 (stride on the 3x3 conv of each bottleneck), the 7x7/2
stem + 3x3/2 max pool, last BatchNorm scale of every block zero-initialised,
LeCun-normal conv init.  Data: streamed from disk (grain) with RandomResizedCrop
224 (area 8-100%, aspect 3/4-4/3) + horizontal flip; eval resizes the shorter
side to 256 and takes the centre 224 crop; ImageNet's mean/std.  Recipe: SGD
Nesterov momentum 0.9, lr 0.1 x batch / 256 (0.4 at the global batch 1024),
5 warm-up epochs then cosine to 0 over 100 epochs, L2 1e-4 x 0.5 on the
kernels in the loss, bfloat16 activations (on GPU/TPU).

Command (prepare the data once: the ILSVRC tree, train/<wnid>/*.JPEG and the
flat val/ with Kaggle's LOC_val_solution.csv; then train; a workdir resumes
exactly):

    python -m jaxres.prepare_data --source ~/ILSVRC/Data/CLS-LOC --name imagenet \\
        --val_labels ~/ILSVRC/LOC_val_solution.csv --data_dir ~/tensorflow_datasets
    python launch.py --config configs/imagenet_resnet50.py --workdir runs/in_r50

Expected: 76.72% top-1 after 100 epochs: the Flax example's published figure
(8 V100s, batch 512, float32; 76.47% with mixed precision at batch 2048),
not measured here.

Departures: the example decodes and crops with tf.image (bicubic resize);
jaxres crops with PIL (bilinear, torchvision's box sampling) in grain workers.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.dataset = 'imagenet'
    config.eval_split = 'validation'
    config.input.kind = 'streaming'
    config.input.workers = 8  # per host: decoding JPEGs is the host's main work
    config.data.image_size = 224
    config.data.train_pp = 'random_resized_crop|flip_lr|normalize'
    config.data.eval_resize = 256
    config.data.mean = (0.485, 0.456, 0.406)
    config.data.std = (0.229, 0.224, 0.225)

    config.model.depth = 50
    config.model.block = 'bottleneck'
    config.model.stem = 'imagenet'
    config.model.kernel_init = 'lecun_normal'
    config.model.zero_init_residual = True

    config.batch_size = 1024
    config.eval_batch_size = 1000
    config.num_epochs = 100.0
    config.dtype = 'bfloat16'
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 0.5e-4  # the example's 1e-4 * 0.5 * sum(w**2)
    config.optimizer.weight_decay_mode = 'loss'
    config.schedule.learning_rate = 0.1 * config.batch_size / 256
    config.schedule.warmup_epochs = 5.0

    config.log_every_steps = 500
    config.checkpoint.every_minutes = 30.0  # an epoch is hours on one host
    config.checkpoint.max_to_keep = 2
    config.eval.every_epochs = 1
    return config
