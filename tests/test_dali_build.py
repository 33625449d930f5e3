"""funloader.dali.build: the plugin cache is not trusted blindly (#19), and the one jpeglib.h finder.

Loading a shared library runs its constructors, so every load here happens in a child process
with a time limit: a planted plugin that ran would leave a marker file, a truncated one used to
kill Python with SIGBUS."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install nvidia-dali-cuda120)")

from funloader import _headers  # noqa: E402
from funloader.dali import build as plugin_build  # noqa: E402
from funloader.dali.build import LIBRARY_NAME, PluginBuildError  # noqa: E402

pytestmark = pytest.mark.timeout(600)

EVIL_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
  const char *marker = getenv("FUNLOADER_TEST_MARKER");
  FILE *f = marker ? fopen(marker, "w") : NULL;
  if (f) { fputs("the planted plugin ran", f); fclose(f); }
}
"""


@pytest.fixture(scope="session")
def built_cache(tmp_path_factory):
    """A cache holding a freshly built plugin (built once, in a child, into a private folder)."""
    cache = tmp_path_factory.mktemp("plugin_cache")
    os.chmod(cache, 0o755)
    child = subprocess.run([sys.executable, "-m", "funloader.dali.build"], env=dict(os.environ, FUNLOADER_CACHE_DIR=str(cache)),
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    library = Path(child.stdout.strip())
    assert library.parent.parent == cache and plugin_build.check(library) is None
    return library


@pytest.fixture()
def cache_copy(built_cache, tmp_path):
    """A private copy of the built cache: ``(cache root, library path)``."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    shutil.copytree(built_cache.parent, cache / built_cache.parent.name)
    return cache, cache / built_cache.parent.name / LIBRARY_NAME


@pytest.fixture(scope="session")
def evil_library(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evil")
    source = folder / "evil.c"
    source.write_text(EVIL_SOURCE)
    library = folder / "evil.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True, timeout=120)
    return library


def load_in_child(cache: Path, marker: Path, build: bool = True, timeout: float = 600):
    """``load_plugin(build=...)`` in a fresh interpreter: ``(returncode, outcome, stderr)``."""
    code = textwrap.dedent(f"""
        import json
        from funloader.dali import load_plugin
        from funloader.dali.build import PluginBuildError
        try:
            print(json.dumps(["loaded", load_plugin(build={build})]))
        except PluginBuildError as error:
            print(json.dumps(["PluginBuildError", str(error)]))
    """)
    env = dict(os.environ, FUNLOADER_CACHE_DIR=str(cache), FUNLOADER_TEST_MARKER=str(marker))
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    lines = child.stdout.strip().splitlines()
    return child.returncode, (json.loads(lines[-1]) if lines else None), child.stderr


def plant(library: Path, payload: bytes, forge_manifest: bool) -> None:
    library.write_bytes(payload)
    if forge_manifest:  # an attacker who can write the folder can write a matching manifest too
        plugin_build.manifest_path(library).write_text(json.dumps(plugin_build._fingerprint(library)))


def test_a_writable_planted_plugin_is_refused_before_it_runs(cache_copy, evil_library, tmp_path):
    cache, library = cache_copy
    plant(library, evil_library.read_bytes(), forge_manifest=True)
    os.chmod(library, 0o666)
    marker = tmp_path / "ran"
    code, outcome, stderr = load_in_child(cache, marker, build=False, timeout=120)
    assert code == 0, stderr[-2000:]
    assert outcome[0] == "PluginBuildError" and "writable by other users" in outcome[1] and str(library) in outcome[1]
    assert not marker.exists()


def test_a_plugin_in_a_folder_other_users_control_is_refused(cache_copy, evil_library, tmp_path):
    """The predictable path in a shared FUNLOADER_CACHE_DIR: the folder was made by another user
    (root: really chowned to another uid) or is writable by others without the sticky bit."""
    cache, library = cache_copy
    plant(library, evil_library.read_bytes(), forge_manifest=True)
    if os.geteuid() == 0:
        os.chown(library.parent, 54321, 54321)
        os.chown(library, 54321, 54321)
        expected = "is owned by uid 54321, not by you"
    else:
        os.chmod(library.parent, 0o777)
        expected = "writable by other users (mode 0777, no sticky bit)"
    marker = tmp_path / "ran"
    for build in (False, True):  # building does not replace it either: the folder is not ours
        code, outcome, stderr = load_in_child(cache, marker, build=build, timeout=120)
        assert code == 0, stderr[-2000:]
        assert outcome[0] == "PluginBuildError" and expected in outcome[1] and "FUNLOADER_CACHE_DIR" in outcome[1]
        assert not marker.exists()
    os.chmod(library.parent, 0o755)


@pytest.mark.skipif(os.geteuid() != 0, reason="planting a file owned by another uid needs root (CI runs as root)")
def test_a_foreign_owned_plugin_in_our_folder_is_refused(cache_copy, evil_library, tmp_path):
    cache, library = cache_copy
    plant(library, evil_library.read_bytes(), forge_manifest=True)
    os.chown(library, 54321, 54321)
    code, outcome, stderr = load_in_child(cache, tmp_path / "ran", build=False, timeout=120)
    assert outcome[0] == "PluginBuildError" and "owned by uid 54321" in outcome[1]
    assert not (tmp_path / "ran").exists()


def test_empty_and_garbage_plugins_are_refused_not_crashing(cache_copy, tmp_path):
    cache, library = cache_copy
    for payload, forged, expected in ((b"", False, "does not match its build manifest"),
                                      (b"\x7fELF garbage" * 100, False, "does not match its build manifest"),
                                      (b"garbage, manifest matching" * 100, True, "DALI could not load the plugin")):
        plant(library, payload, forge_manifest=forged)
        code, outcome, stderr = load_in_child(cache, tmp_path / "ran", build=False, timeout=120)
        assert code == 0, (payload[:10], stderr[-2000:])  # no crash, no raw RuntimeError
        assert outcome[0] == "PluginBuildError" and expected in outcome[1], outcome
    plugin_build.manifest_path(library).unlink()
    assert "has no build manifest" in plugin_build.check(library)
    plugin_build.manifest_path(library).write_text("{not json")
    assert "unreadable manifest" in plugin_build.check(library)


def test_a_truncated_plugin_is_rebuilt_instead_of_killing_python(cache_copy, tmp_path):
    """A truncated .so used to kill Python with SIGBUS on load; it now fails the manifest check and
    is rebuilt before anything is loaded."""
    cache, library = cache_copy
    data = library.read_bytes()
    library.write_bytes(data[: len(data) // 2])
    code, outcome, stderr = load_in_child(cache, tmp_path / "ran")
    assert code == 0, stderr[-3000:]
    assert outcome == ["loaded", str(library)]
    assert "failed its checks" in stderr and "rebuilding it" in stderr
    assert plugin_build.check(library) is None and library.read_bytes() != data[: len(data) // 2]


def test_unwritable_cache_says_what_to_do(monkeypatch, tmp_path):
    """A read-only HOME: the message says to set FUNLOADER_CACHE_DIR or to use the fallback backend.
    As root a read-only mode does not stop a write, so the cache path is made unusable by putting it
    under a regular file (mkdir fails with ENOTDIR, as it fails with EACCES/EROFS for a user)."""
    blocker = tmp_path / "home"
    blocker.write_text("not a folder")
    monkeypatch.delenv("FUNLOADER_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(blocker))
    with pytest.raises(PluginBuildError, match=r"cannot write the DALI plugin cache .*FUNLOADER_CACHE_DIR.*"
                                               r"backend='external_source'"):
        plugin_build.build()


def test_one_jpeglib_finder_for_setup_and_the_plugin(monkeypatch, tmp_path):
    """setup.py loads funloader/_headers.py by path and the plugin build imports it: one search,
    which now includes the multiarch folder (dali/build.py lacked it)."""
    multiarch = "/usr/include/" + (__import__("sysconfig").get_config_var("MULTIARCH") or "x86_64-linux-gnu")
    monkeypatch.setattr(_headers.sysconfig, "get_config_var", lambda name: multiarch.rsplit("/", 1)[1])
    monkeypatch.delenv("JPEG_INCLUDE_DIR", raising=False)
    monkeypatch.setattr(_headers.os.path, "exists", lambda path: path == multiarch + "/jpeglib.h")
    assert _headers.find_jpeglib_include() == [multiarch]
    assert plugin_build._jpeg_include_dirs() == [multiarch]
    monkeypatch.setattr(_headers.os.path, "exists", lambda path: False)
    with pytest.raises(PluginBuildError, match="libjpeg62-turbo-dev"):
        plugin_build._jpeg_include_dirs()
    setup_source = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
    assert "_headers.py" in setup_source and "jpeglib.h\"))" not in setup_source
