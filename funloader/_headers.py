"""Finding the libjpeg-turbo headers (``jpeglib.h``): the one search used by ``setup.py`` (the C
extension) and ``funloader.dali.build`` (the DALI plugin).

Dependency-free on purpose: ``setup.py`` loads this file by path before funloader is built.
"""
import os
import sys
import sysconfig

JPEGLIB_MISSING = (
    "jpeglib.h (libjpeg-turbo headers) not found.\n"
    "  Debian/Ubuntu: apt-get install libjpeg62-turbo-dev   (or libjpeg-turbo8-dev)\n"
    "  Fedora/RHEL:   dnf install libjpeg-turbo-devel\n"
    "  macOS:         brew install jpeg-turbo\n"
    "  conda:         conda install libjpeg-turbo\n"
    "or set JPEG_INCLUDE_DIR / JPEG_LIBRARY_DIR to a libjpeg-turbo installation.")

#: Folders the compiler searches anyway: found there, no -I flag is needed (and none is given,
#: since -I/usr/include can break C++ #include_next chains).
_SYSTEM_INCLUDE = ("/usr/include",)


def jpeglib_candidates():
    """The folders searched for ``jpeglib.h``, in order."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    return [d for d in [os.environ.get("JPEG_INCLUDE_DIR", ""), os.path.join(sys.prefix, "include"), "/usr/include",
                        "/usr/include/" + multiarch if multiarch else "", "/usr/local/include",
                        "/opt/homebrew/include", "/opt/local/include"] if d]


def find_jpeglib_include():
    """Include folders to add for ``jpeglib.h`` (``[]`` when it is in a system folder), or raise
    ``FileNotFoundError`` with the install instructions ``JPEGLIB_MISSING``."""
    for directory in jpeglib_candidates():
        if os.path.exists(os.path.join(directory, "jpeglib.h")):
            return [] if directory in _SYSTEM_INCLUDE else [directory]
    raise FileNotFoundError(JPEGLIB_MISSING)
