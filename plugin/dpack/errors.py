"""dpack's exception tree, in one place, and how text from outside is quoted in its messages. The CLI
catches ``DpackError`` and exits non-zero with one clear line; the live service counts and logs the ones a
peer's input raises and goes on."""

from typing import Any


def one_line(value: Any, limit: int = 300) -> str:
    """``value`` as one printable line of at most ``limit`` characters. What a peer or a file supplies
    (node names, error texts, paths, YAML) goes into dpack's messages and log through this, so it can
    neither break a line, nor carry terminal escapes, nor grow a message without bound."""
    text = str(value)
    if len(text) > 4 * limit:
        text = text[: 4 * limit]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


class FrameTooLarge(CodecError):
    """A frame above the size cap: refused unparsed; ``entries`` samples (or connection summaries, as
    ``counter`` says) it carried, counted cheaply from its text, are counted as dropped."""

    def __init__(self, message: str, counter: str, entries: int) -> None:
        super().__init__(message)
        self.counter = counter
        self.entries = entries


class TransportError(DpackError):
    """The link to Zeek cannot be set up (bad URL, missing bindings)."""


class RulesError(DpackError):
    """A rule, a rules file or the rules state that cannot be used."""
