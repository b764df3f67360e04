"""The README documents every command, option and tag (sqlite-utils' test_docs habit)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nbpipe import cli
from nbpipe.parse import PREFIX_ALIASES, ROLE_ALIASES

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize("command", cli.COMMANDS)
def test_every_command_is_in_the_readme(command: str) -> None:
    assert f"nbpipe {command} " in README or f"nbpipe {command}\n" in README


@pytest.mark.parametrize("command", cli.COMMANDS)
def test_every_option_of_every_command_is_in_the_readme(command: str) -> None:
    sub = next(a for a in cli._parser()._actions if a.dest == "command")
    parser = sub.choices[command]  # type: ignore[attr-defined]
    for action in parser._actions:
        for option in action.option_strings:
            if option in ("-h", "--help"):
                continue
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", README), f"{command} {option}"


@pytest.mark.parametrize("tag", sorted(set(ROLE_ALIASES) | {f"{p}:" for p in PREFIX_ALIASES}))
def test_every_tag_and_alias_is_in_the_readme(tag: str) -> None:
    assert f"`{tag}" in README, tag


def test_the_readme_starts_with_the_two_commands() -> None:
    blocks = re.findall(r"```bash\n(.*?)\n```", README, flags=re.S)
    assert "nbpipe execute" in blocks[0] and "--html" in blocks[0] and "pip install" in blocks[0]
    assert blocks[1].endswith("pytest") and "pip install" in blocks[1]
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    extras = re.search(r"-e '(\.\[[^\]]+\])'", blocks[1]).group(1)  # type: ignore[union-attr]
    assert extras in ci  # CI installs what the README's test command installs
