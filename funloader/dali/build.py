"""Build the funloader DALI plugin (``libfunloader_dali.so``) on first use, into a cache directory.

The plugin is one C++ file (``dct_decode_op.cc``, the DALI operator) plus funloader's C core
(``funloader/csrc/jpegdct_core.c``, compiled in, not copied), built with the installed DALI's own
compile/link flags (``nvidia.dali.sysconfig``) and linked against the system libjpeg-turbo.  It
must match the DALI it is loaded into, so it is built where it runs, once per DALI version and
source revision::

    $FUNLOADER_CACHE_DIR (default $XDG_CACHE_HOME/funloader or ~/.cache/funloader)
        dali-<dali version>-<hash of sources and flags>/libfunloader_dali.so

The build is atomic (compiled under a temporary name, then renamed) and serialised across
processes by a file lock, so concurrent first uses (e.g. one per GPU rank) build it once.

Nothing in the cache is loaded on trust (loading a library runs its constructors). Before every
``dlopen`` the cached plugin is checked: the folders holding it (its own and the cache root) must
be owned by the current user (or root) and not writable by others unless sticky, else the build
refuses with :class:`PluginBuildError` (another user could have planted the file: set
``FUNLOADER_CACHE_DIR`` to a folder only you can write); the file must be owned by you, not
writable by others, and match the manifest written when it was built
(``libfunloader_dali.so.manifest.json``: size and SHA-256). A plugin that fails the file checks
(truncated, empty, garbage, planted, no manifest) is rebuilt automatically.

Prebuild from the command line (prints the library path)::

    python -m funloader.dali.build [--force] [--verbose]

Needs: ``g++``/``gcc``, libjpeg-turbo headers (``jpeglib.h``) and the CUDA runtime headers that
DALI's headers include (``cuda_runtime.h``: a CUDA toolkit, or ``pip install nvidia-cuda-runtime-cu12``).
"""
from __future__ import annotations

import argparse
import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import List, Optional

from .. import files
from .._headers import find_jpeglib_include

LIBRARY_NAME = "libfunloader_dali.so"
MANIFEST_SUFFIX = ".manifest.json"
_HERE = Path(__file__).resolve().parent
_CSRC = _HERE.parent / "csrc"
#: The sources compiled into the plugin (the core is shared with the CPython extension).
SOURCES = [_HERE / "dct_decode_op.cc", _HERE / "dct_decode_op.h", _CSRC / "jpegdct_core.c", _CSRC / "jpegdct_core.h",
           _CSRC / "huffman.c", _CSRC / "huffman.h", _CSRC / "resize.c", _CSRC / "resize.h"]
_CXXFLAGS = ["-std=c++17", "-O3", "-fPIC", "-pthread", "-Wall", "-Wno-unused-parameter"]
_CFLAGS = ["-std=c11", "-O3", "-fPIC", "-pthread", "-Wall", "-Wno-unused-parameter", "-Wno-clobbered"]


class PluginBuildError(RuntimeError):
    """The DALI plugin could not be built (missing compiler or headers, or a compiler error)."""


def cache_root() -> Path:
    """Where built plugins are kept: ``$FUNLOADER_CACHE_DIR`` or ``$XDG_CACHE_HOME/funloader`` or ``~/.cache/funloader``."""
    return files.cache_root()


def _dali():
    try:
        import nvidia.dali as dali
        import nvidia.dali.sysconfig as dali_sysconfig
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise PluginBuildError("NVIDIA DALI is not installed: pip install nvidia-dali-cuda120 "
                               "(or use fun_pipeline(..., backend='external_source'))") from error
    return dali, dali_sysconfig


def _find_tool(names: List[str], env_var: str) -> str:
    candidates = [os.environ[env_var]] if os.environ.get(env_var) else names
    for name in candidates:
        path = shutil.which(name.split()[0])
        if path:
            return path
    raise PluginBuildError(
        f"no C/C++ compiler found (looked for {', '.join(candidates)}; set ${env_var}). "
        "Install one (Debian/Ubuntu: apt-get install g++; Fedora: dnf install gcc-c++) or use "
        "fun_pipeline(..., backend='external_source'), which needs no build.")


def _cuda_include_dirs() -> List[str]:
    """Directories holding ``cuda_runtime.h`` (DALI's headers include it, even for CPU operators)."""
    candidates = []
    for var in ("FUNLOADER_CUDA_INCLUDE", "CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"):
        value = os.environ.get(var)
        if value:
            candidates += [value, os.path.join(value, "include")]
    candidates += ["/usr/local/cuda/include"] + sorted(glob.glob("/usr/local/cuda-*/include"), reverse=True)
    for site in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        candidates += sorted(glob.glob(os.path.join(site, "nvidia", "cuda_runtime", "include")))
        candidates += sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include")))
    candidates += ["/usr/include"]
    for directory in candidates:
        if os.path.exists(os.path.join(directory, "cuda_runtime.h")):
            return [directory]
    raise PluginBuildError(
        "cuda_runtime.h not found: DALI's plugin headers include it even for CPU operators. Install "
        "the CUDA runtime headers (a CUDA toolkit, or `pip install nvidia-cuda-runtime-cu12`) or set "
        "FUNLOADER_CUDA_INCLUDE to the directory that holds cuda_runtime.h; or use "
        "fun_pipeline(..., backend='external_source'), which needs no build.")


def _jpeg_include_dirs() -> List[str]:
    try:
        return find_jpeglib_include()
    except FileNotFoundError as error:
        raise PluginBuildError(str(error)) from None


def build_flags() -> dict:
    """Compiler commands and flags the plugin is built with (they are part of the cache key)."""
    _, dali_sysconfig = _dali()
    jpeg_lib = os.environ.get("JPEG_LIBRARY_DIR")
    return {
        "cxx": _find_tool(["g++", "c++", "clang++"], "CXX"),
        "cc": _find_tool(["gcc", "cc", "clang"], "CC"),
        "include": [str(_CSRC)] + _jpeg_include_dirs() + _cuda_include_dirs(),
        "dali_compile": list(dali_sysconfig.get_compile_flags()),
        "dali_link": list(dali_sysconfig.get_link_flags()) + [f"-Wl,-rpath,{dali_sysconfig.get_lib_dir()}"],
        "link": ([f"-L{jpeg_lib}"] if jpeg_lib else []) + ["-ljpeg", "-pthread"],
    }


def library_path(flags: Optional[dict] = None) -> Path:
    """Where the plugin for the installed DALI and the current sources lives (built or not)."""
    dali, _ = _dali()
    flags = flags or build_flags()
    digest = hashlib.sha256()
    for source in SOURCES:
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    digest.update(repr(sorted(flags.items())).encode())
    digest.update(repr((_CXXFLAGS, _CFLAGS)).encode())
    return cache_root() / f"dali-{dali.__version__}-{digest.hexdigest()[:16]}" / LIBRARY_NAME


def _run(command: List[str], verbose: bool) -> None:
    if verbose:
        print(" ".join(command), file=sys.stderr)
    process = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if process.returncode != 0:
        raise PluginBuildError(f"building the funloader DALI plugin failed ({command[0]} exited "
                               f"{process.returncode}):\n{' '.join(command)}\n{process.stdout[-6000:]}")


def _compile(flags: dict, target: Path, verbose: bool) -> None:
    includes = [f"-I{d}" for d in flags["include"]]
    with tempfile.TemporaryDirectory(prefix="build-", dir=target.parent) as scratch:
        core_object = os.path.join(scratch, "jpegdct_core.o")
        huffman_object = os.path.join(scratch, "huffman.o")
        resize_object = os.path.join(scratch, "resize.o")
        op_object = os.path.join(scratch, "dct_decode_op.o")
        # The compiles are independent: run them side by side.
        jobs = [
            [flags["cc"], *_CFLAGS, *includes, "-c", str(_CSRC / "jpegdct_core.c"), "-o", core_object],
            [flags["cc"], *_CFLAGS, *includes, "-c", str(_CSRC / "huffman.c"), "-o", huffman_object],
            [flags["cc"], *_CFLAGS, *includes, "-c", str(_CSRC / "resize.c"), "-o", resize_object],
            [flags["cxx"], *_CXXFLAGS, *flags["dali_compile"], *includes, "-c", str(_HERE / "dct_decode_op.cc"),
             "-o", op_object],
        ]
        processes = []
        for command in jobs:
            if verbose:
                print(" ".join(command), file=sys.stderr)
            processes.append((command, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                        text=True)))
        for command, process in processes:
            output, _ = process.communicate()
            if process.returncode != 0:
                raise PluginBuildError(f"building the funloader DALI plugin failed ({command[0]} exited "
                                       f"{process.returncode}):\n{' '.join(command)}\n{output[-6000:]}")
        temporary = os.path.join(scratch, LIBRARY_NAME)
        _run([flags["cxx"], "-shared", "-o", temporary, op_object, core_object, huffman_object, resize_object,
              *flags["dali_link"], *flags["link"]],
             verbose)
        manifest = os.path.join(scratch, LIBRARY_NAME + MANIFEST_SUFFIX)
        with open(manifest, "w") as handle:
            json.dump(_fingerprint(temporary), handle)
        os.replace(manifest, manifest_path(target))
        os.replace(temporary, target)  # atomic: readers see no file or the whole library


def manifest_path(library: Path) -> Path:
    """The manifest written next to a built plugin (its size and SHA-256)."""
    return library.with_name(library.name + MANIFEST_SUFFIX)


def _fingerprint(path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"format": "funloader-dali-plugin", "bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


def check(target: Path) -> Optional[str]:
    """Why the cached plugin ``target`` must not be loaded (None: it may). Checks ownership and modes
    (file and folders) and the build manifest (size, SHA-256), without loading anything."""
    reason = files.untrusted_reason(target, levels=2)
    if reason is not None:
        return reason
    manifest = manifest_path(target)
    if not manifest.exists():
        return f"{target} has no build manifest {manifest.name} (built by an older funloader, or not by funloader)"
    reason = files.untrusted_reason(manifest, levels=0)
    if reason is not None:
        return reason
    try:
        recorded = json.loads(files.read_file(manifest, limit=1 << 16))
        actual = _fingerprint(target)
    except (OSError, ValueError) as exc:
        return f"{manifest}: unreadable manifest ({exc})"
    if not isinstance(recorded, dict) or recorded.get("bytes") != actual["bytes"] or recorded.get("sha256") != actual["sha256"]:
        return (f"{target} does not match its build manifest ({actual['bytes']} bytes, sha256 {actual['sha256'][:12]}..."
                f"; recorded {recorded.get('bytes') if isinstance(recorded, dict) else '?'} bytes): truncated, "
                f"damaged or replaced")
    return None


def _refuse_folder(target: Path) -> None:
    """PluginBuildError when a folder on the way to ``target`` could hold a planted plugin."""
    for folder in (target.parent, target.parent.parent):
        if not folder.exists():
            continue
        reason = files.untrusted_reason(folder, levels=1)
        if reason is not None:
            raise PluginBuildError(
                f"refusing the DALI plugin cache: {reason}. Another user could plant a library there, and loading "
                f"it would run its code. Set FUNLOADER_CACHE_DIR to a folder only you can write (or use "
                f"fun_pipeline(..., backend='external_source'), which needs no plugin).")


def verified_library(flags: Optional[dict] = None) -> Path:
    """The cached plugin's path after the checks of :func:`check` (nothing built or loaded);
    PluginBuildError when it is missing or fails them."""
    target = library_path(flags)
    _refuse_folder(target)
    if not target.exists():
        raise PluginBuildError(f"{target}: plugin not built (python -m funloader.dali.build)")
    reason = check(target)
    if reason is not None:
        raise PluginBuildError(f"refusing to load the cached DALI plugin: {reason} (rebuild it: python -m "
                               f"funloader.dali.build --force)")
    return target


def build(force: bool = False, verbose: bool = False) -> Path:
    """Build the plugin if the cache has no valid one; return the path of ``libfunloader_dali.so``,
    checked (:func:`check`) and safe to load.

    Raises:
        PluginBuildError: DALI, a compiler, ``jpeglib.h`` or ``cuda_runtime.h`` is missing, the
            compiler failed (its output is in the message), the cache folder cannot be created, or
            it could hold another user's files (see the module docstring).
    """
    flags = build_flags()
    target = library_path(flags)
    _refuse_folder(target)
    if target.exists() and not force and check(target) is None:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        lock_file = open(target.parent / ".lock", "a")
    except OSError as exc:
        raise PluginBuildError(
            f"cannot write the DALI plugin cache {target.parent} ({exc.strerror or exc}): set FUNLOADER_CACHE_DIR "
            f"to a writable folder (e.g. FUNLOADER_CACHE_DIR=/tmp/$USER-funloader), or use "
            f"fun_pipeline(..., backend='external_source'), which needs no plugin") from None
    _refuse_folder(target)  # the folder was just made, or made by someone else in the meantime
    with lock_file as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same plugin
        try:
            if target.exists() and not force:
                reason = check(target)
                if reason is None:
                    return target
                print(f"funloader: the cached DALI plugin failed its checks ({reason}); rebuilding it",
                      file=sys.stderr)
                for stale in (target, manifest_path(target)):
                    if stale.exists():
                        stale.unlink()
            started = time.perf_counter()
            if verbose:
                print(f"funloader: building the DALI plugin into {target}", file=sys.stderr)
            _compile(flags, target, verbose)
            if verbose:
                print(f"funloader: built in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    reason = check(target)
    if reason is not None:  # pragma: no cover - the build just wrote both files
        raise PluginBuildError(f"the freshly built DALI plugin failed its checks: {reason}")
    return target


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m funloader.dali.build",
                                     description="Build (or find) the funloader DALI plugin and print its path.")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache has it")
    parser.add_argument("--verbose", "-v", action="store_true", help="show the compiler commands")
    args = parser.parse_args(argv)
    try:
        path = build(force=args.force, verbose=args.verbose)
    except PluginBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
