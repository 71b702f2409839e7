"""The README and the docs hold together: every relative link and anchor resolves, every quoted
`bench ...` command parses against the real CLI, every quoted config key exists, and the
reference page is what the code generates."""

import re
import shlex
import unicodedata
from pathlib import Path

import pytest
import typer

from bench.cli import app
from bench.reference import reference_markdown
from dibregman.config import config_keys

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)
SECTIONS = ("train", "ratio", "net", "eval", "mixture", "image_teacher", "generator")
KEY = re.compile(r"`((?:" + "|".join(SECTIONS) + r")\.[a-z_]+)")


def slugs(page: Path) -> set[str]:
    """The anchors a page's headings get, as GitHub and as mkdocs (python-markdown) make them."""
    anchors = set()
    text = FENCE.sub("", page.read_text())
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        plain = unicodedata.normalize("NFKD", heading.replace("`", "")).strip().lower()
        github = re.sub(r"[^\w\- ]", "", plain).replace(" ", "-")
        markdown = re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", plain)).strip("-")
        anchors |= {github, markdown}
    return anchors


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for page in PAGES:
        for target in LINK.findall(FENCE.sub("", page.read_text())):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in slugs(resolved):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def quoted_commands() -> list[tuple[str, list[str]]]:
    """Every ``bench ...`` command line in the pages' code blocks (continuations joined,
    comments dropped, shell prefixes such as ``.venv/bin/`` and ``&&`` chains split)."""
    commands = []
    for page in PAGES:
        for block in FENCE.findall(page.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                for part in line.split("&&"):
                    first = part.split(maxsplit=1)[0] if part.strip() else ""
                    if first.split("/")[-1] == "bench":
                        commands.append((page.name, shlex.split(part, comments=True)[1:]))
    return commands


def parse(args: list[str]) -> None:
    """Parse ``bench ARGS`` as the CLI would, down to the last subcommand, without running it
    (raises ``typer.TyperException``, Typer's usage errors, for an unknown command or option,
    or a bad value)."""
    command, path = typer.main.get_command(app), ["bench"]
    while True:
        ctx = command.make_context(" ".join(path), list(args))
        if not hasattr(command, "list_commands"):
            return
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            return
        name, command, args = command.resolve_command(ctx, rest)
        path.append(name)


def test_every_quoted_bench_command_parses_against_the_cli():
    commands = quoted_commands()
    assert len(commands) > 20  # the README and the docs quote many
    failures = []
    for page, args in commands:
        try:
            parse(args)
        except typer.TyperException as err:
            failures.append(f"{page}: bench {' '.join(args)}: {err}")
    assert failures == []


def test_a_misspelt_command_or_option_would_be_caught():
    with pytest.raises(typer.TyperException, match="No such option: --dryrun"):
        parse(["sweep", "sweeps/divergences.yaml", "--dryrun"])
    with pytest.raises(typer.TyperException, match="No such command 'sweeps'"):
        parse(["sweeps", "sweeps/divergences.yaml"])


def test_every_quoted_config_key_exists():
    keys = set(config_keys())
    unknown = sorted({(page.name, key) for page in PAGES
                      for key in KEY.findall(page.read_text())
                      if key not in keys and not key.endswith("_")})
    assert unknown == []


def test_the_reference_page_is_what_the_code_generates():
    """docs/reference.md is generated (`python -m bench.reference`); regenerate it after
    changing a config key or a command."""
    assert (ROOT / "docs" / "reference.md").read_text() == reference_markdown()
