"""Base config holding every key jaxres reads; other configs import and edit it.

On its own it is the standard CIFAR-10 ResNet-18 recipe of cifar10_resnet18.py
(kuangliu ResNet-18, 11,173,962 parameters; SGD lr 0.1, 5 warm-up epochs then
cosine over 200 epochs, batch 128, pad-4 crop + horizontal flip).

Command:
    python launch.py --config configs/default.py --workdir runs/default

Expected: as cifar10_resnet18.py (about 95% on one GPU; not measured here).

Departures: from cifar10_resnet18.py, normalised with the training set's own
per-channel mean and std (cifar10_resnet18.py uses kuangliu's values).
"""

import ml_collections

from jaxres import models


def get_config() -> ml_collections.ConfigDict:
    """Returns the default config."""
    c = ml_collections.ConfigDict()

    # Data. `dataset` is a TFDS name ('cifar10', 'cifar100', or one written by
    # `python -m jaxres.prepare_data`), or 'digits' (scikit-learn's bundled 8x8
    # digits, no download).
    c.dataset = 'cifar10'
    c.data_dir = ''  # '' -> $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.download = True  # let TFDS download when the dataset is not prepared yet
    c.train_split = 'train'
    c.eval_split = 'test'
    c.validation_size = 0  # > 0: hold out N training examples as the 'validation' split
    c.validation_from = 'random'  # 'random' (seeded, fixed) or 'end' (last N; resident only)
    # > 0: train on a fixed class-balanced subset, the first N / num_classes training
    # examples of each class (after the validation hold-out); 0 = all of them.
    c.train_subset = 0
    # dataset='synthetic': generated images, no files (tests, benchmarks).
    c.synthetic = ml_collections.ConfigDict()
    c.synthetic.num_train = 2048
    c.synthetic.num_eval = 512
    c.synthetic.image_size = 32
    c.synthetic.num_classes = 10

    c.data = ml_collections.ConfigDict()
    c.data.image_size = 0  # 0 = keep the stored size; else resize (bilinear) to this
    # Per-channel, on [0, 1] pixels; () = the training set's own (stored by
    # prepare_data, or computed from a resident training set).
    c.data.mean = ()
    c.data.std = ()
    # Preprocessing specs (jaxres/data/preprocess.py): ops joined by '|', in order.
    # Before normalize, on uint8 pixels: crop(padding, mode='constant'|'reflect'),
    # flip_lr(mode='random'|'alternate' (airbench: each image flipped in every
    # other epoch)), flip_ud, affine(rotation=deg, width_shift=frac,
    # height_shift=frac, interpolation='bilinear'|'nearest', fill='constant'|'nearest'),
    # color_jitter(brightness, contrast, saturation, hue<=0.5) (torchvision
    # ColorJitter), random_resized_crop(size=0 (= data.image_size), scale, ratio).
    # normalize: with data.mean/std (data.standardize) and resize to image_size.
    # After it: cutout(size) (DeVries & Taylor, on normalised images), then
    # mixup(alpha) and/or cutmix(alpha) (with both, one of them per example).
    c.data.train_pp = 'crop(4)|flip_lr|normalize'
    c.data.eval_pp = 'normalize'  # deterministic ops only; predict.pp '' = this
    # Evaluation (streaming input): resize the shorter side to eval_resize, then
    # take the centre image_size crop (ImageNet: 256 then 224); 0 = image_size.
    c.data.eval_resize = 0
    # 'channel': (x - mean) / std per channel; 'scalar': one mean/std for all
    # channels (1-tuples); 'image': each image by its own mean/std (train and eval).
    c.data.standardize = 'channel'

    # Where the training set is read from: 'resident' (all of it on every device,
    # augmented inside jit: CIFAR's fast path), 'streaming' (grain reads batches
    # from a TFDS ArrayRecord data set on disk), or 'auto' (resident when the stored
    # training set fits resident_budget_gb, else streaming; the log says which).
    c.input = ml_collections.ConfigDict()
    c.input.kind = 'auto'
    c.input.resident_budget_gb = 0.0  # 0 = a quarter of one device's memory
    c.input.workers = 0  # streaming: grain worker processes (0 = threads in this process)
    c.input.prefetch = 4  # streaming: batches read ahead

    # Model: a registered family and its keys, each with its default
    # (jaxres/models/: resnet.py documents the ResNet keys, airbench.py and
    # wide_resnet.py theirs).  The ResNet family's kuangliu ResNet-18.
    c.model = models.model_config('resnet', depth=18)

    # Training.
    c.seed = 0
    c.batch_size = 128  # global, over all devices of all hosts
    c.eval_batch_size = 500
    # May be fractional (airbench: 9.9): the schedule has ceil(num_epochs * steps per
    # epoch) steps, the last epoch partial.
    c.num_epochs = 200.0
    c.num_train_steps = -1  # > 0: stop after this many steps (quick runs)
    c.dtype = 'float32'  # or 'bfloat16' (params, BN stats and loss stay float32)
    c.label_smoothing = 0.0
    c.steps_per_dispatch = 1  # > 1: run K steps per dispatch (lax.scan); same result
    c.nonfinite = 'stop'  # NaN/Inf loss: 'stop' (keep the last good checkpoint) or 'skip'
    # > 1: each step's global batch runs as this many sequential micro-batches whose
    # gradients are averaged (one update per batch_size examples); BatchNorm
    # normalises each micro-batch and updates its running statistics after each.
    c.grad_accum_steps = 1

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = 'sgd'  # 'sgd' | 'adam' | 'muon' (Muon for conv kernels, SGD for the rest)
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 5e-4
    # 'coupled': L2 added to the gradient (PyTorch weight_decay);
    # 'decoupled': AdamW-style; 'loss': wd * sum(kernel**2) added to the loss.
    c.optimizer.weight_decay_mode = 'coupled'
    # name='muon': conv kernels get Nesterov momentum muon_momentum, orthogonalised
    # by muon_ns_steps Newton-Schulz steps, times muon_learning_rate x the
    # schedule's fraction of its peak; muon_normalize first rescales each kernel
    # to norm sqrt(out channels) (airbench94_muon).
    c.optimizer.muon_learning_rate = 0.24
    c.optimizer.muon_momentum = 0.6
    c.optimizer.muon_ns_steps = 3
    c.optimizer.muon_normalize = True
    c.optimizer.grad_clip_value = 0.0  # > 0: clip each gradient element
    c.optimizer.grad_clip_norm = 0.0  # > 0: clip by global norm
    # Learning-rate multiplier for BatchNorm biases; their coupled weight decay is
    # divided by it, so the decay per step stays the same (airbench: 64).
    c.optimizer.bn_bias_lr_scale = 1.0
    # Parameters never updated: '/'-joined path prefixes, e.g. ('stem/conv/kernel',).
    # Their gradient is not computed (stop_gradient), nor any backward pass below
    # them that only they needed (('stem',) skips the stem's and first conv's).
    c.optimizer.freeze = ()
    # airbench's lookahead: every N steps (0 = off) the weights and BN statistics
    # move to an EMA of themselves whose decay rises as lookahead_decay**N * t**3
    # over the schedule (t = fraction done); the last step copies the EMA in.
    c.optimizer.lookahead_every = 0
    c.optimizer.lookahead_decay = 0.95
    # > 0: keep an exponential moving average of the weights and BN statistics,
    # ema = ema_decay * ema + (1 - ema_decay) * weights after every step (e.g.
    # 0.999); evaluated instead of the live weights with eval.ema, and saved in
    # the checkpoints.  Separate from the lookahead, which moves the live weights.
    c.optimizer.ema_decay = 0.0

    c.schedule = ml_collections.ConfigDict()
    # 'warmup_cosine' | 'constant' | 'step' (x decay_rate every decay_epochs) |
    # 'multistep' (x decay_rate at each epoch in milestones) |
    # 'exponential' (x decay_rate every epoch) | 'cosine_epochs' (PyTorch
    # CosineAnnealingLR stepped per epoch) | 'onecycle' (PyTorch OneCycleLR, per step;
    # learning_rate is the peak).
    c.schedule.name = 'warmup_cosine'
    c.schedule.learning_rate = 0.1
    c.schedule.warmup_epochs = 5.0
    c.schedule.end_learning_rate = 0.0  # also cosine_epochs' eta_min
    c.schedule.decay_rate = 0.1
    c.schedule.decay_epochs = 30
    c.schedule.milestones = (60, 120, 160)  # multistep: x decay_rate at each of these epochs
    c.schedule.epoch_offset = 0  # step/exponential: count epochs from this (1: seed 000)
    c.schedule.pct_start = 0.3
    c.schedule.div_factor = 25.0  # initial lr = peak / div_factor
    c.schedule.final_div_factor = 1e4  # final lr = initial / final_div_factor
    c.schedule.anneal = 'cos'  # onecycle: 'cos' or 'linear' (PyTorch anneal_strategy)
    c.schedule.cycle_momentum = True  # onecycle: SGD momentum / Adam b1 cycled inversely
    c.schedule.base_momentum = 0.85
    c.schedule.max_momentum = 0.95

    # Logging, evaluation, checkpoints.
    c.log_every_steps = 100
    c.eval = ml_collections.ConfigDict()
    c.eval.every_epochs = 1
    c.eval.every_steps = 0  # > 0: also every N steps (an ImageNet epoch is hours)
    c.eval.checkpoint = 'latest'  # for --mode=eval: 'latest' | 'best' | a step | a path
    c.eval.split = ''  # '' = eval_split
    c.eval.ema = True  # with optimizer.ema_decay > 0: evaluate (and predict with) the EMA
    c.eval.tta = False  # average the softmax of each image and its mirror (eval and predict)
    # With tta: also the image shifted one pixel up-left and down-right (reflected
    # edges), weights 1/2, 1/4, 1/4 (airbench's level 2).
    c.eval.tta_translate = False

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_epochs = 1
    c.checkpoint.every_steps = 0  # > 0: also every N steps
    c.checkpoint.every_minutes = 0.0  # > 0: also when this long has passed since the last
    c.checkpoint.max_to_keep = 3  # the last k, plus the best by best_metric
    c.checkpoint.best_metric = 'eval_accuracy'
    c.checkpoint.async_save = True

    # --mode=predict: input .npy (N,H,W,C uint8), image folder or CIFAR-style pickle
    # batch; output .npy (softmax probabilities) or .csv (index,label,class_name,confidence).
    c.predict = ml_collections.ConfigDict()
    c.predict.input = ''
    c.predict.output = ''
    c.predict.pp = ''  # preprocessing spec; '' = data.eval_pp
    # An exported model (model.onnx, model.jaxexport or saved_model/) to predict with
    # instead of the checkpoint ('' = the checkpoint).
    c.predict.model = ''

    # --mode=export: the eval checkpoint as uint8 images -> probabilities, with the
    # eval preprocessing inside: 'jax' (jax.export), 'onnx', 'savedmodel' (TF).
    c.export = ml_collections.ConfigDict()
    c.export.formats = ('jax', 'onnx', 'savedmodel')
    c.export.dir = ''  # '' = WORKDIR/export

    # Start a new run from other weights: a torchvision ResNet-18/34/50 state_dict
    # (.pth, needs torch) or a jaxres workdir / checkpoints dir; the head is replaced
    # when the class count differs and the optimizer starts fresh.
    c.init_from = ''

    # CPU speed tricks, each 'auto' = on where it helps (the CPU), off on GPU/TPU;
    # none changes the model or its checkpoints (jaxres/cpu/backend.py has the table).
    c.backend = ml_collections.ConfigDict()
    # Convolutions: 'xla' (lax.conv), 'im2col' (patches x one matrix product),
    # 'winograd' (im2col, but 3x3 stride-1 convs by Winograd F(2x2, 3x3)).
    c.backend.conv = 'auto'
    c.backend.max_pool = 'auto'  # 'tiles' (reshape + max, mask gradient) | 'xla'
    c.backend.packed_pixels = 'auto'  # 'on' | 'off': resident training set as pixel words
    c.backend.hugepages = 'auto'  # 'on' | 'off': read from the command line before JAX starts

    # Multi-process start-up; empty = auto-detect a cluster (see README).
    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = ''
    c.distributed.num_processes = 1
    c.distributed.process_id = 0
    c.distributed.cpu_collectives = ''  # 'gloo' for several CPU processes
    return c
