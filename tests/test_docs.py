"""The commands the README and docs/ show are commands that run: a renamed option or config key
breaks a user's copy-and-paste, so every documented command is read as the code would read it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from unsee.cli import parser
from unsee.runs import method_configs

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "benchmarks").glob("*.md"))]


def _shell_text(page: Path) -> str:
    """A page's code blocks with continued lines joined, as a shell reads them."""
    blocks = re.findall(r"```[\w-]*\n(.*?)```", page.read_text(), re.S)
    return re.sub(r"\\\n\s*", " ", "\n".join(blocks))


def unsee_commands() -> list[tuple[str, str]]:
    """Every concrete ``unsee ...`` command in a code block, as (page, command). Synopsis lines,
    with ``[optional]`` parts, ``a|b`` choices or ``...``, are templates, not commands."""
    found = []
    for page in PAGES:
        for line in _shell_text(page).splitlines():
            for part in re.split(r"&&|;|\bdo\b", line):
                part = re.sub(r"\s#.*", "", part).strip()
                if part.startswith("unsee ") and not re.search(r"\[|\||\.\.\.", part):
                    found.append((page.name, part))
    return found


def benchmark_commands() -> list[tuple[str, str, str]]:
    """Every ``python benchmarks/X.py ...`` command in the pages, as (page, script, its arguments)."""
    found = []
    for page in PAGES:
        text = re.sub(r"\\\n\s*", " ", page.read_text())
        found += [(page.name, m[1], m[2]) for m in re.finditer(r"python (benchmarks/[\w/]+\.py)([^\n`]*)", text)]
    return found


def test_the_pages_show_commands_to_check() -> None:
    """The extraction finds what the pages hold: a regex that matched nothing would pass the tests below."""
    assert len(unsee_commands()) >= 15
    assert len(benchmark_commands()) >= 100


@pytest.mark.parametrize(("page", "command"), unsee_commands())
def test_every_documented_unsee_command_parses(page: str, command: str) -> None:
    words = shlex.split(command)
    args = parser().parse_args(words[1:])  # a usage error exits, and fails the test
    if words[1] in ("unlearn", "forget", "tune"):
        # a config file an earlier command of the page writes (unsee tune's pick) is not there to read
        written = str(args.config).endswith((".yaml", ".json")) and not Path(args.config).exists()
        method_configs(args.method, None if written else args.config, args.overrides)  # unknown, ill-typed keys raise


@pytest.mark.parametrize(("page", "script", "arguments"), benchmark_commands())
def test_every_documented_benchmark_option_exists(page: str, script: str, arguments: str) -> None:
    """Read from the script's source, not its ``--help``: a benchmark imports torch, and 180 imports
    would cost minutes. An option counts where the script or a benchmark module it imports spells it."""
    path = ROOT / script
    assert path.exists(), f"{page} runs {script}, which does not exist"
    source = path.read_text()
    for module in re.findall(r"^from (\w+) import", source, re.M):
        if (ROOT / "benchmarks" / f"{module}.py").exists():
            source += (ROOT / "benchmarks" / f"{module}.py").read_text()
    for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", arguments):
        assert f'"{flag}"' in source, f"{page}: {script} has no option {flag}"
