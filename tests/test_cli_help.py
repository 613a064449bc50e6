"""Every command of `vigil` says what it does: `vigil COMMAND --help` exits 0 and prints the
command's own description (its docstring's first paragraph), and `vigil --help` lists it."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from vigil.cli import app

# The list, then the commands added beside it.
COMMANDS = [
    *("up", "api", "responder", "worker", "saga", "detector", "projector", "replay", "sql"),
    *("tail", "eval", "demo", "investigate", "approve", "reject"),
    *("notifier", "propose", "pause", "resume", "shop"),
]
# Wide enough that rich lays each description on one line.
RUNNER = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1", "TERMINAL_WIDTH": "250"})


def flat(text: str) -> str:
    """`text` without rich's box drawing, its whitespace made single spaces."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def description(name: str) -> str:
    command = typer.main.get_command(app)
    assert isinstance(command, typer.core.TyperGroup)
    assert name in command.commands, f"vigil has no command {name!r}"
    return command.commands[name].help or ""


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_says_what_it_does(name: str) -> None:
    said = description(name)
    first = flat(said.split("\n\n")[0])
    assert len(first.split()) >= 5, f"vigil {name}: a description of a few words at least"
    result = RUNNER.invoke(app, [name, "--help"], prog_name="vigil")
    assert result.exit_code == 0, result.output
    assert first in flat(result.output)
    assert f"Usage: vigil {name}" in flat(result.output)


def test_vigil_help_lists_every_command() -> None:
    result = RUNNER.invoke(app, ["--help"], prog_name="vigil")
    assert result.exit_code == 0, result.output
    listed = set(re.findall(r"^│ (\w+)\s", result.output, re.M))
    assert set(COMMANDS) <= listed, f"not listed: {sorted(set(COMMANDS) - listed)}"
