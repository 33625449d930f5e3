"""Build funloader: pure-Python package plus the `funloader._jpegdct` C extension.

The extension links against the system libjpeg-turbo (Debian/Ubuntu: ``libjpeg62-turbo-dev``,
Fedora: ``libjpeg-turbo-devel``, conda: ``libjpeg-turbo``).  Set ``FUNLOADER_SANITIZE=1`` to build
it with AddressSanitizer and UndefinedBehaviorSanitizer (see README, "Hardening").
"""
import importlib.util
import os
import sys

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _about():
    about = {}
    with open(os.path.join(HERE, "funloader", "_version.py")) as handle:
        exec(handle.read(), about)
    return about["__version__"]


def _find_jpeglib():
    """Extra include dirs for jpeglib.h (funloader/_headers.py, shared with the DALI plugin build,
    loaded by path: the package is not built yet), or stop with the install instructions."""
    spec = importlib.util.spec_from_file_location("_funloader_headers", os.path.join(HERE, "funloader", "_headers.py"))
    headers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(headers)
    try:
        return headers.find_jpeglib_include()
    except FileNotFoundError as error:
        sys.exit(f"funloader: {error}")


def _extension():
    include_dirs = _find_jpeglib()
    library_dirs = [d for d in [os.environ.get("JPEG_LIBRARY_DIR", "")] if d]
    compile_args = ["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                    "-Wno-missing-field-initializers", "-Wno-clobbered", "-pthread"]
    link_args = ["-pthread"]
    if os.environ.get("FUNLOADER_SANITIZE"):
        flags = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined", "-g", "-O1"]
        compile_args = [a for a in compile_args if a != "-O3"] + flags
        link_args += flags
    return Extension(
        "funloader._jpegdct",
        sources=["funloader/csrc/jpegdct_module.c", "funloader/csrc/jpegdct_core.c", "funloader/csrc/huffman.c",
                 "funloader/csrc/resize.c"],
        depends=["funloader/csrc/jpegdct_core.h", "funloader/csrc/huffman.h", "funloader/csrc/resize.h"],
        include_dirs=include_dirs + ["funloader/csrc"],
        library_dirs=library_dirs,
        libraries=["jpeg"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )


setup(
    name="funloader",
    version=_about(),
    description="JPEG-native data loading for PyTorch: DCT coefficients straight from JPEG files for FUN models",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=["funloader", "funloader.bench", "funloader.models", "funloader.data", "funloader.dali"],
    package_dir={"funloader": "funloader", "funloader.models": "models"},
    package_data={"funloader": ["csrc/*.c", "csrc/*.h", "csrc/*.cc", "_jpegdct.pyi"], "funloader.data": ["*.jpg", "*.txt", "*.md"],
                  "funloader.dali": ["*.cc", "*.h"]},
    ext_modules=[_extension()],
    install_requires=["numpy>=1.22", "torch>=2.3", "tqdm>=4.60", "pillow>=9.0", "matplotlib>=3.5"],
    extras_require={
        "plot": ["matplotlib>=3.5"],
        "dali": ["nvidia-dali-cuda120>=1.30"],
        "test": ["pytest>=7", "pytest-timeout", "matplotlib>=3.5", "jpeg2dct", "webdataset", "nvidia-dali-cuda120>=1.30", "onnx", "onnxscript"],
    },
    entry_points={"console_scripts": ["funloader=funloader.cli:main"]},
    zip_safe=False,
)
