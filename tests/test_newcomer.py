"""Issue 18, the newcomer's first hour: help that tells, no banners, one-line errors for a client install,
a game that serves by itself, recordings that keep their pixels, a training summary that agrees."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import CONVERTER, REMOTE, SERVE, STANDALONE, TRAIN, run_command

COMMANDS = {"train": TRAIN, "convert": CONVERTER, "serve": SERVE, "play": REMOTE, "play-local": STANDALONE}
# An option line of argparse's help: two spaces, the flags, then (on the same line or the next, indented) the help.
OPTION = re.compile(r"^  (-\S.*?)(?:\s{2,}(\S.*))?$")


def option_helps(help_text: str) -> dict[str, str]:
    """Each option of a ``--help`` output with its whole help text (continuation lines joined)."""
    helps: dict[str, str] = {}
    current = None
    for line in help_text.split("options:", 1)[1].splitlines():
        match = OPTION.match(line)
        if match:
            current = match.group(1).split()[0].rstrip(",")
            helps[current] = match.group(2) or ""
        elif current and line.startswith("    ") and line.strip():
            helps[current] = (helps[current] + " " + line.strip()).strip()
    return helps


@pytest.mark.parametrize("name", COMMANDS)
def test_every_flag_has_help_and_defaults_are_shown(name):
    result = run_command(COMMANDS[name], "--help", timeout=120, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    helps = option_helps(result.stdout)
    assert len(helps) > 5, result.stdout
    missing = [flag for flag, text in helps.items() if not text]
    assert not missing, f"{name}: flags without help: {missing}\n{result.stdout}"
    # Every value flag that has a fixed default says it.
    expected = {
        "train": {"--steps": "50000000", "--eval-interval": "250000", "--gpu": "0", "--pretrained-type": "best"},
        "convert": {"--max-batch-size": "32", "--instance-kind": "KIND_GPU", "--name": "atari"},
        "serve": {"--grpc-port": "8001", "--http-port": "8000", "--ready-timeout": "120"},
        "play": {"--port": "8001", "--episodes": "1", "--seed": "0", "--epsilon": "0.05"},
        "play-local": {"--episodes": "1", "--seed": "0", "--rendering_scale": "3.0"},
    }[name]
    for flag, default in expected.items():
        assert f"(default: {default}" in helps[flag], (flag, helps[flag])


def test_serve_help_names_the_command_as_run():
    result = run_command(SERVE, "--help", timeout=120)
    assert result.stdout.startswith("usage: python -m atari_trtis_demo.serve "), result.stdout[:200]
