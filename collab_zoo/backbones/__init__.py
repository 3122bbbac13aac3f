"""Networks the papers use that timm lacks, registered into timm's registry."""
from . import cifar_resnet, densenet_cifar, mobilenet_cifar, wide_resnet  # noqa: F401
