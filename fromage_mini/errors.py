"""The one exception type users see."""


class FromageError(Exception):
    """A user-facing error: the CLI prints its message as one line, without a traceback."""
