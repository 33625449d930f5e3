"""Exceptions raised by funloader.

``JPEGDecodeError`` is a ``ValueError``: the input is not a JPEG we can decode (truncated, corrupt,
not a JPEG at all, too large).  ``UnsupportedJPEGError`` is a subclass for valid JPEGs that FUN
models cannot take (CMYK/YCCK, RGB-coded without the YCbCr transform, 12-bit, lossless).
Messages name the file (when a path was given) and the cause.

``FunloaderError`` is the base of every error that names a bad input or argument (a file, a folder,
a checkpoint, an option) and its cause.  The command line prints such an error as one line,
``funloader <command>: error: <message>``, and exits with status 2 instead of a traceback.
"""
import os
import sys

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` called from inside funloader that points at the first
    frame outside the package (the user's line), however deep the call chain is."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        level += 1
        frame = frame.f_back
    return level


class FunloaderError(Exception):
    """A bad input or argument, named with its cause; the CLI reports it in one line (exit 2)."""


class UsageError(FunloaderError, ValueError):
    """A bad argument or input (option value, folder, index, checkpoint...) named in the message."""


class JPEGDecodeError(FunloaderError, ValueError):
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
