"""collab_zoo: a timm-style model zoo for collaborative training methods.

    import collab_zoo
    model = collab_zoo.create_model("dks_resnet50", pretrained=True)

Importing the package registers every zoo architecture with timm, so ``timm.create_model`` builds them too.
"""
from .contract import CollabModel, TrainingRound
from .errors import (ChecksumMismatchError, CollabZooError, CorruptWeightsError, HubUnreachableError,
                     IncompatibleConfigError, NoPretrainedWeightsError, StateDictMismatchError, UnknownModelError,
                     UnknownTagError, UnsafeWeightsError)
from .factory import create_model
from .hub import push_to_hub, save_for_hub
from .registry import (get_hub_config, get_pretrained_cfg, is_model, is_zoo_model, list_models, list_pretrained,
                       register_hub_config, tags_of)
from . import backbones, methods  # noqa: F401  (registers the architectures)

__version__ = "0.1.0"

__all__ = [
    "create_model", "list_models", "list_pretrained", "is_model", "is_zoo_model", "get_pretrained_cfg",
    "get_hub_config", "register_hub_config", "tags_of", "save_for_hub", "push_to_hub", "CollabModel", "TrainingRound",
    "CollabZooError", "UnknownModelError", "UnknownTagError", "NoPretrainedWeightsError", "HubUnreachableError",
    "CorruptWeightsError", "ChecksumMismatchError", "UnsafeWeightsError", "StateDictMismatchError",
    "IncompatibleConfigError", "__version__", "CollabTask",
]


def __getattr__(name):
    # CollabTask is a timm.task.TrainingTask (timm >= 1.0.27): imported on first use, so `import collab_zoo`
    # stays light and works with an older timm; the attribute then says which timm it needs.
    if name == "CollabTask":
        from .training.task import CollabTask

        return CollabTask
    raise AttributeError(f"module 'collab_zoo' has no attribute {name!r}")
