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


class NonFiniteError(CollabZooError, FloatingPointError):
    """Tensors hold NaN or infinity where only finite values may be: weights about to be saved or published, a
    training step that diverged, or a checkpoint being read. ``names`` lists the tensors, first ones first."""

    def __init__(self, message: str, names=()):
        super().__init__(message)
        self.names = tuple(names)

    def __reduce__(self):  # keeps ``names`` when the error crosses a process boundary (DataLoader workers, DDP)
        return type(self), (str(self), self.names)


class CorruptCheckpointError(CollabZooError, OSError):
    """A checkpoint folder is torn or damaged: a file is missing, or its size or sha256 differs from the folder's
    manifest (message names the file and what to do)."""


class RunWriteError(CollabZooError, OSError):
    """A run's files could not be written (disk full, read-only folder, file-size limit); what was already
    complete on disk was left as it was."""


class RunFolderBusyError(CollabZooError, RuntimeError):
    """Another process is writing the same run folder (two runs with the same --output/--experiment)."""
