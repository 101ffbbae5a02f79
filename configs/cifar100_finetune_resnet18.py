"""Seed 004, part 2: torchvision ResNet-18 fine-tuned on CIFAR-100 at 224x224 (11,227,812 params).

Reproduces Zhenye Na's "HW4" part 2: ImageNet ResNet-18 fine-tuned for 14
epochs.  Model: torchvision's ResNet-18 layout (ImageNet stem conv7x7/2 + BN +
ReLU + maxpool3x3/2; BasicBlocks [2,2,2,2] at 64-512; conv1x1 + BN downsample),
head replaced by linear 512->100, nothing frozen, started from the ImageNet
weights file resnet18-5c106cde.pth.  Data: CIFAR-100 upsampled to 224: train
RandomResizedCrop(224, scale 0.08-1, ratio 3/4-4/3) + horizontal flip, test
Resize(224) (the seed's CenterCrop(224) of a 224 image is the identity);
ImageNet normalisation.  Recipe: Adam lr 1e-3, weight decay 1e-5 (coupled),
lr x0.95 per epoch, batch 64, 14 epochs.

Command (the weights are not on these machines; download them first):
    python launch.py --config configs/cifar100_finetune_resnet18.py \
        --workdir runs/cifar100_finetune_resnet18 \
        --config.init_from=resnet18-5c106cde.pth

Expected: 71.23% test accuracy (the report's figure; not measured here).

Departures: the seed evaluated in training mode (BN batch statistics); jaxres
evaluates in inference mode.  Without --config.init_from it trains from
scratch.  BN running variance is tracked unbiased, as PyTorch does.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.dataset = 'cifar100'
    config.data.image_size = 224
    config.data.mean = (0.485, 0.456, 0.406)
    config.data.std = (0.229, 0.224, 0.225)
    config.data.train_pp = 'random_resized_crop(scale=(0.08, 1.0))|flip_lr|normalize'

    config.model.depth = 18
    config.model.stem = 'imagenet'
    config.model.bn_running_var = 'unbiased'

    config.batch_size = 64
    config.eval_batch_size = 200
    config.num_epochs = 14
    config.optimizer.name = 'adam'
    config.optimizer.weight_decay = 1e-5
    config.schedule.name = 'exponential'
    config.schedule.learning_rate = 1e-3
    config.schedule.decay_rate = 0.95
    return config
