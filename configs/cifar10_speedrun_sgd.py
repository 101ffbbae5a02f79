"""CIFAR-10 time-to-accuracy on two CPU cores: airbench94's net and SGD recipe.

The base of ``cifar10_speedrun`` (which swaps in Muon; see its docstring); this
file was ``cifar10_speedrun.py`` until 2026-11-24, so the figures below and
the older sections of benchmarks/RESULTS.md under that name are this recipe's.

Reproduces airbench94's net and recipe (Keller Jordan's CIFAR-10 speed records:
94% in 9.9 epochs) from jaxres's general parts, trained for the 6 epochs that
fit 30 minutes here: the patch-whitening stem (``model.stem='whiten'``, kernel
frozen), three conv-pool groups of widths 64/256/256 with identity (dirac)
initialised convs and bias-only BatchNorm (PyTorch momentum 0.6 = Flax 0.4), a
max-pooled head scaled by 1/9, Nesterov SGD with a 64x learning rate on BN
biases, a linear one-cycle ("triangle") schedule, label smoothing 0.2,
alternating flips, reflect-padded 2-pixel translations, lookahead every 5 steps
(``optimizer.lookahead_every``) and flip + translate test-time augmentation.
airbench's learning rate and weight decay (per 1024 examples, summed loss,
decoupled from momentum) are converted to jaxres's mean loss and
PyTorch-coupled decay: lr = 11.5 / (1 + 1/(1 - 0.85)) = 1.5 at batch 1024,
weight decay = 0.0153 * 1024 / 7850.7 / 1.5 = 1.33e-3.  Here the batch is 512
(XLA:CPU ran this net's step 16% faster per image at 512 than at 1024 in one
measurement, and an epoch gets twice the steps): the learning rate scales
linearly to 0.75 (the same per example, as airbench's summed loss implies) and
the coupled decay, lr * wd per example, stays 1.33e-3.  Not reproduced:
airbench freezes the whitening bias after 3 epochs (here it trains throughout).

Command (real CIFAR-10 JPEGs of ../shared/data; the preparation is one-off):

    python -m jaxres.prepare_data --source ../shared/data/cifar10-jpeg.tar.gz \\
        --data_dir /tmp/jr/tfds
    python launch.py --config configs/cifar10_speedrun_sgd.py --workdir runs/speedrun_sgd \\
        --config.dataset=cifar10_jpeg --config.data_dir=/tmp/jr/tfds

With the official files (TFDS ``cifar10``) drop the two dataset overrides.

Measured here (2-core AMD EPYC VM, float32, Winograd convolutions, launch to
eval_results.json; benchmarks/RESULTS.md), three seeds: 89.85% (seed 31,
1,760 s), 89.25% (seed 32, 1,764 s), 89.56% (seed 33, 1,682 s) test accuracy
with TTA: mean 89.55%, worst 89.25%, all within 29.4 minutes.  Of a run's time,
~1,580-1,640 s go to start-up, compile and the 6 epochs (median 184-194
images/s), and 105-128 s to the 6-view TTA evaluation (compile included) and
the last checkpoint.
The same with ``--config.num_epochs=5`` (seed 30): 88.54% in 1,434 s.  Earlier,
at batch 1024 and lr 1.5 with im2col convolutions: 88.49% (seed 20, 1,603 s)
and 88.12% (seed 21) in 5 epochs.  Issue 8's target, >= 90.0% in <= 30 minutes,
is not met by this recipe: 6 epochs land 0.45 points short on average with
little time to spare (7 epochs would need ~15% faster steps); Muon
(``cifar10_speedrun``) meets it.
airbench93's narrower widths (``--config.model.stage_widths='(64,128,128)'``,
~1.9x faster per epoch) reached 87.95% in 8 epochs (1,367 s, before lookahead
and the momentum fix); widths (64, 192, 192) for 7 epochs: 89.16% (seed 40,
1,606 s).

Expected on one GPU (an expectation, not a measurement): the whole step is
~0.6 GFLOP per image in float32 (XLA's count); an A100 trains airbench94's
net at roughly 50,000 images in 0.35 s in PyTorch fp16.  jaxres keeps the data
and augmentation on the device and uses XLA's own convolutions there
(``backend.conv='auto'``), so with ``--config.dtype=bfloat16`` and
``--config.num_epochs=10`` one would expect airbench94's ~94% in well under a
minute of training, with compilation (~tens of seconds) dominating.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """The airbench-style recipe."""
    c = default.get_config()
    c.dataset = 'cifar10'

    c.data.mean = (0.4914, 0.4822, 0.4465)
    c.data.std = (0.2470, 0.2435, 0.2616)
    c.data.crop_padding = 2
    c.data.padding_mode = 'reflect'
    c.data.hflip = True
    c.data.flip_mode = 'alternate'

    m = c.model
    m.stem = 'whiten'
    m.whiten_kernel = 2
    m.block = 'conv_pool'
    m.stage_sizes = (1, 1, 1)
    # airbench94's widths; airbench93's (64, 128, 128) run 1.9x faster per epoch
    # here but reached less in 30 minutes (87.95% in 8 epochs vs 88.49% in 5).
    m.stage_widths = (64, 256, 256)
    m.stage_strides = (2, 2, 2)  # max-pool sizes
    m.activation = 'gelu'
    m.kernel_init = 'dirac'
    m.dense_init = 'pytorch'
    m.bn_momentum = 0.4  # Flax convention: airbench's PyTorch momentum 0.6
    m.bn_epsilon = 1e-12
    m.bn_scale = False
    m.head_pool = 'max'
    m.head_bias = False
    m.head_scale = 1 / 9

    c.batch_size = 512  # airbench: 1024; see the docstring
    c.eval_batch_size = 1000
    c.num_epochs = 6  # what fits 30 minutes on 2 CPU cores, evaluation included
    c.label_smoothing = 0.2

    c.optimizer.name = 'sgd'
    c.optimizer.momentum = 0.85
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 1.33e-3
    c.optimizer.bn_bias_lr_scale = 64.0
    c.optimizer.freeze = ('stem/conv/kernel',)
    c.optimizer.lookahead_every = 5
    c.optimizer.lookahead_decay = 0.95

    c.schedule.name = 'onecycle'
    c.schedule.anneal = 'linear'
    c.schedule.learning_rate = 0.75  # 1.5 at airbench's batch 1024, scaled linearly
    c.schedule.pct_start = 0.23
    c.schedule.div_factor = 1 / 0.2  # starts at 0.2x the peak
    c.schedule.final_div_factor = 0.2 / 0.07  # ends at 0.07x the peak
    c.schedule.cycle_momentum = False

    c.log_every_steps = 12
    c.eval.every_epochs = 100  # > num_epochs: only the final evaluation (each costs ~1.5 min)
    c.eval.tta = True
    c.eval.tta_translate = True
    c.checkpoint.every_epochs = 1
    return c
