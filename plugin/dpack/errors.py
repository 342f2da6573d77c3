"""dpack's exception tree. The CLI catches ``DpackError`` and exits non-zero with one clear line."""


class DpackError(Exception):
    """Base of every error dpack reports to a user."""


class CaptureError(DpackError):
    """A capture file that cannot be read at all (missing, wrong magic, unsupported link type)."""


class ModelError(DpackError):
    """A model file that is missing, corrupt, or does not fit the configured export."""


class ConfigError(DpackError):
    """A configuration value that is missing, of the wrong type, or out of range."""


class LabelsError(DpackError):
    """A labels CSV that cannot be used for evaluation."""
