"""jaxres: ResNet training on CIFAR in JAX/Flax, from one GPU to a TPU pod."""

__version__ = '0.1.0'
