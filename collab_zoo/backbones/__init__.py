"""Networks the papers use that timm lacks, registered into timm's registry."""
from . import (alexnet, alexnet_caffe, bignet, cifar_resnet, densenet_cifar, googlenet, lenet,  # noqa: F401
               mlp, mobilenet_cifar, nin, wide_resnet)
