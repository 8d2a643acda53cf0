"""The one error a conversion raises on purpose: its input cannot be converted at all."""
from effdet.errors import DataError


class ConversionError(DataError):
    """A malformed annotation file, a missing directory or an unusable argument. The message is one line that
    names the file (or argument) and the reason; `python -m effdet.data.convert` prints it and exits with 2."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason
