"""README's quick start must stay true: CI runs exactly its test command, and the CLI it shows exists."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import funloader

REPO = Path(__file__).resolve().parents[1]


def _quick_start_commands():
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_quick_start_is_two_commands_and_ci_runs_the_test_one():
    commands = _quick_start_commands()
    assert len(commands) == 2
    assert "funloader bench" in commands[0]
    assert "pytest" in commands[1]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert commands[1] in [line.strip() for line in ci], "the test command in .ci/run differs from README's"
    assert "torch==2.13.0" in commands[0] and "torch==2.13.0" in commands[1]


def test_cli_version():
    result = subprocess.run([sys.executable, "-m", "funloader", "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"funloader {funloader.__version__}"
