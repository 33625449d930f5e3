"""Exceptions raised by funloader.

``JPEGDecodeError`` is a ``ValueError``: the input is not a JPEG we can decode (truncated, corrupt,
not a JPEG at all, too large).  ``UnsupportedJPEGError`` is a subclass for valid JPEGs that FUN
models cannot take (CMYK/YCCK, RGB-coded without the YCbCr transform, 12-bit, lossless).
Messages name the file (when a path was given) and the cause.
"""


class JPEGDecodeError(ValueError):
    """A JPEG could not be decoded. ``filename`` is the path (or None), ``reason`` the cause."""

    def __init__(self, reason, filename=None):
        self.reason = str(reason)
        self.filename = None if filename is None else str(filename)
        where = self.filename if self.filename is not None else "<buffer>"
        super().__init__(f"{where}: {self.reason}")

    def __reduce__(self):  # keep (reason, filename) through pickling (DataLoader workers)
        return (type(self), (self.reason, self.filename))


class UnsupportedJPEGError(JPEGDecodeError):
    """A well-formed JPEG whose coding funloader does not support (CMYK/YCCK, RGB, 12-bit, lossless)."""


class JPEGWarning(UserWarning):
    """libjpeg reported recoverable corruption (lenient mode only; strict mode raises instead)."""
