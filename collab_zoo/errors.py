"""Exceptions a user can act on. Each message says what was wrong and what to do next."""


class CollabZooError(Exception):
    """Base of every collab_zoo error."""


class UnknownModelError(CollabZooError, RuntimeError):
    """No architecture of that name is registered (message lists the closest names)."""


class UnknownTagError(CollabZooError, RuntimeError):
    """The architecture exists but not with that pretrained tag (message lists the tags)."""


class NoPretrainedWeightsError(CollabZooError, RuntimeError):
    """pretrained=True for an architecture or tag whose weights are not published."""


class HubUnreachableError(CollabZooError, OSError):
    """The Hub could not be reached and nothing usable is cached."""


class CorruptWeightsError(CollabZooError, OSError):
    """A weight file is truncated or damaged; its cached copy has been removed."""


class ChecksumMismatchError(CorruptWeightsError):
    """A weight file's sha256 differs from the one its hub config pins."""


class UnsafeWeightsError(CollabZooError, ValueError):
    """A weight file is not safetensors; the zoo never unpickles weights it loads."""


class StateDictMismatchError(CollabZooError, RuntimeError):
    """A checkpoint's keys or shapes do not fit the model (message names them)."""


class IncompatibleConfigError(CollabZooError, ValueError):
    """An option or checkpoint does not fit the model or data it is used with."""


class TrainOutputNotATensorError(CollabZooError, TypeError, AttributeError):
    """A collaborative model's train-mode output (every head's logits) reached code that wants one tensor, e.g. a
    plain cross-entropy; the message says to use the model's own objective."""


class InvalidModelConfigError(CollabZooError, ValueError):
    """A model folder's or Hub repo's config.json is malformed or names something it may not (message says which
    field and what to do)."""


class InvalidHubIdError(CollabZooError, ValueError):
    """A Hub repo id (``owner/name[@revision]``) or a file name inside a repo is malformed."""
