"""Tests of the ``funloader`` command line dispatch (funloader/cli.py)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from funloader._version import __version__
from funloader.cli import COMMANDS, main


def test_help_lists_every_command_with_its_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for name, (_, _, help_text) in COMMANDS.items():
        # one line per command: its name, then its one-line help
        assert any(line.split()[:1] == [name] and " ".join(line.split()[1:]) == help_text for line in lines), name


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["trian"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "trian" in err and "train" in err


def test_version_does_not_import_the_commands():
    code = ("import sys, runpy; sys.argv = ['funloader', '--version']\n"
            "try:\n    runpy.run_module('funloader', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'funloader.train', 'funloader.bench') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines() == [f"funloader {__version__}", "[]"], result.stdout + result.stderr


def test_command_help_reaches_the_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--help"])
    assert exit_info.value.code == 0
    assert "--sweep-channels" in capsys.readouterr().out
