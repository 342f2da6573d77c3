"""dpack's exception tree, in one place. The CLI catches ``DpackError`` and exits non-zero with one clear
line; the live service counts and logs the ones a peer's input raises and goes on."""


class DpackError(Exception):
    """Base of every error dpack reports to a user."""


class ConfigError(DpackError):
    """A configuration value that is missing, of the wrong type, or out of range."""


class CaptureError(DpackError):
    """A capture file that cannot be read at all (missing, wrong magic, unsupported link type)."""


class LabelsError(DpackError):
    """A labels CSV that cannot be used for evaluation."""


class ModelError(DpackError):
    """A model file that is missing, corrupt, or does not fit the configured export."""


class CodecError(DpackError):
    """A message from Zeek that does not decode, or does not fit the contract."""


class TransportError(DpackError):
    """The link to Zeek cannot be set up (bad URL, missing bindings)."""


class RulesError(DpackError):
    """A rule, a rules file or the rules state that cannot be used."""
