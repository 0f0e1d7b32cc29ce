"""The project's own exceptions: expected failures a user can act on.

The CLI prints these as one clear line (exit status 1) instead of a traceback.
"""


class PersonSearchError(Exception):
    """Base class for every expected, user-facing error."""


class DatasetError(PersonSearchError):
    """A dataset folder or annotation file is missing or malformed."""


class ImageError(PersonSearchError):
    """An image file cannot be read or decoded."""


class ConfigError(PersonSearchError):
    """A configuration file or override is invalid."""


class ResultsError(PersonSearchError):
    """A results file (detections, features) is missing arrays or has wrong shapes/values."""


class CheckpointError(PersonSearchError):
    """A checkpoint is missing, corrupt, or belongs to another model."""


class WeightsUnavailableError(PersonSearchError):
    """Pretrained weights cannot be downloaded here and no local file was given."""
