"""The docs stay true: every command in README.md's and docs/*.md's ```bash blocks still parses,
every relative link and repository path they name exists, and bench/RESULTS.md's summary
commands still run the benchmarks they name.

- `ssb ...` / `.venv/bin/ssb ...`: parsed by the CLI's own parser (cluster.cli.build_parser);
  for the commands that take a run config, the config is built the way the command builds it
  (--config, the flags that stand for settings, dotted overrides; `serve.*` overrides as service
  settings; `ssb sweep`'s axes one value at a time; `ssb submit`'s overrides as it checks them).
- `make TARGET`: the target exists in the Makefile.
- `curl ... URL`: the URL's path is a route of the curation API (services/routes_*.py,
  services/ui_routes.py, found by a regex over their decorators; `ID` stands for any id).
- `export NAME=...`: a plain assignment.
- `python -m MODULE`, `python FILE`, `bash FILE`: the module or file exists.
Any other program fails the test until it gets a rule here (or joins UNCHECKED with a reason).

Ray-free and engine-free: seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINKED = [*DOCS, *sorted((REPO / "bench").glob("*.md"))]

# Programs whose lines are not checked, and why.
UNCHECKED = {
    "openssl": "draws a token; nothing of this repository",
}
# Subcommands that build a run config from --config, flags and overrides.
CONFIG_COMMANDS = {"curate", "train", "eval", "run", "report", "doctor", "serve", "sweep"}
TOP_DIRS = ("ssb", "pipelines", "services", "cluster", "configs", "bench", "docs", "tests", "scripts")


def _strip_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def bash_commands(path: Path) -> list[str]:
    """The commands of a file's ```bash blocks: continuation lines joined, comments and blank
    lines dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", path.read_text(), flags=re.MULTILINE | re.DOTALL):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if line.strip() and not line.strip().startswith("#"):
                commands.append(line.strip())
    return commands


def _all_commands() -> list[tuple[str, str]]:
    return [(p.relative_to(REPO).as_posix(), c) for p in DOCS for c in bash_commands(p)]


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+):", (REPO / "Makefile").read_text(), flags=re.MULTILINE))


def api_routes() -> list[re.Pattern[str]]:
    """Regexes of the curation API's paths, from the route decorators of its modules."""
    routes = []
    for module in sorted((REPO / "services").glob("routes_*.py")) + [REPO / "services" / "ui_routes.py"]:
        for path in re.findall(r'@\w+\.(?:get|post|put|delete|patch)\(\s*"([^"]+)"', module.read_text()):
            pattern = re.sub(r"\{[^}:]+:path\}", ".+", path)
            pattern = re.sub(r"\{[^}]+\}", "[^/]+", pattern)
            routes.append(re.compile(pattern + "$"))
    return routes


def _config_of(args: argparse.Namespace) -> None:
    """Builds the run config (and for `ssb serve` the service settings) as the command would."""
    from cluster.args import config_from_args

    if args.command == "sweep":
        from pipelines.sweep import split_axes

        plain, axes = split_axes(args.overrides)
        # each value of each axis must be a valid setting on its own
        for axis in axes:
            for value in axis.values:
                config_from_args(argparse.Namespace(**{**vars(args), "overrides": [*plain, f"{axis.key}={value}"]}))
        return
    if args.command == "serve":
        import yaml

        from services.settings import ServiceSettings
        from ssb.config import set_dotted

        tree: dict = {}
        for item in args.overrides:
            if item.startswith("serve."):
                key, _, raw = item[len("serve."):].partition("=")
                set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw else "")
        ServiceSettings.model_validate(tree)
        args = argparse.Namespace(**{**vars(args), "overrides": [o for o in args.overrides if not o.startswith("serve.")]})
    config_from_args(args)


def check_ssb(argv: list[str]) -> None:
    from cluster.cli import build_parser

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"the CLI's parser refuses it (exit {exc.code})") from None
    if args.command in CONFIG_COMMANDS:
        _config_of(args)
    elif args.command == "submit":
        from cluster.submit import check_config, parse_passthrough, split_passthrough

        overrides, flags = split_passthrough(parse_passthrough(args))
        check_config(args.config, overrides)
        check_ssb([args.job_command, "--config", args.config, *flags, *overrides])
    elif args.command == "inspect":
        assert args.run_dir


def check_command(command: str) -> None:
    """Raises AssertionError (or the config's own error) when `command` would not run as written."""
    words = shlex.split(command, comments=True)
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # leading VAR=value assignments
        words = words[1:]
    assert words, "an empty command"
    program, rest = words[0], words[1:]
    if program in ("ssb", ".venv/bin/ssb"):
        check_ssb(rest)
    elif program == "make":
        targets = [w for w in rest if not w.startswith("-") and "=" not in w]
        missing = [t for t in targets if t not in makefile_targets()]
        assert targets and not missing, f"Makefile has no target {missing or '(none named)'}"
    elif program == "curl":
        urls = [w for w in rest if re.match(r"^(https?://)?(localhost|127\.0\.0\.1)(:\d+)?/", w)]
        assert len(urls) == 1, f"expected one localhost URL, found {urls}"
        path = re.sub(r"^(https?://)?[^/]+", "", urls[0]).split("?")[0]
        assert any(r.match(path) for r in api_routes()), f"{path} is not a route of the curation API"
    elif program == "export":
        assert rest and all(re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", w) for w in rest[:1]), "not NAME=value"
    elif program in ("python", "python3", ".venv/bin/python", "bash"):
        if rest[:1] == ["-m"]:
            assert importlib.util.find_spec(rest[1]) is not None, f"no module {rest[1]}"
        else:
            assert (REPO / rest[0]).is_file(), f"no file {rest[0]}"
    elif program not in UNCHECKED:
        raise AssertionError(f"no rule for {program!r} in tests/test_readme.py: add one, or add it to UNCHECKED")


@pytest.mark.parametrize(("where", "command"), _all_commands(), ids=lambda v: v if len(v) < 60 else v[:57] + "...")
def test_a_documented_command_parses(where: str, command: str) -> None:
    try:
        check_command(command)
    except (AssertionError, ValueError, OSError) as exc:  # a config's ValidationError is a ValueError
        pytest.fail(f"{where}: this command would not run as written:\n    {command}\n{type(exc).__name__}: {exc}")


def test_the_docs_have_commands_to_check() -> None:
    commands = [c for _, c in _all_commands()]
    assert any(c.startswith("make demo") for c in commands) and any(c.startswith("make test") for c in commands)
    assert sum(".venv/bin/ssb" in c for c in commands) >= 8


def test_results_summary_commands_run_what_they_name() -> None:
    text = (REPO / "bench" / "RESULTS.md").read_text()
    summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in summary.splitlines() if line.startswith("| ") and not line.startswith("| benchmark")]
    assert len(rows) >= 10
    for row in rows:
        cell = row.rstrip(" |").rsplit("|", 1)[1].strip()
        commands = re.findall(r"`([^`]+)`", cell)
        assert commands, f"bench/RESULTS.md summary: no command in {row!r}"
        for command in commands:
            try:
                check_command(command)
            except (AssertionError, ValueError, OSError) as exc:
                pytest.fail(f"bench/RESULTS.md summary: {command!r} would not run: {type(exc).__name__}: {exc}")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _strip_fences(path.read_text()), flags=re.MULTILINE):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"`[^`\n]*`", "", _strip_fences(path.read_text()))
    links = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)
    return [link for link in links if not re.match(r"^[a-z]+:", link)]


@pytest.mark.parametrize("path", LINKED, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_point_to_files_and_headings_that_exist(path: Path) -> None:
    broken = []
    for link in relative_links(path):
        target, _, fragment = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.exists():
            broken.append(f"{link}: no such file")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            broken.append(f"{link}: no heading #{fragment} in {file.relative_to(REPO)}")
    assert not broken, f"{path.relative_to(REPO)}: " + "; ".join(broken)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_repository_paths_named_in_the_docs_exist(path: Path) -> None:
    names = re.findall(r"`([^`\s]+)`", _strip_fences(path.read_text()))
    paths = [n for n in names if n.split("/")[0] in TOP_DIRS and "/" in n and not re.search(r"[<>*{}…]", n)]
    missing = [p for p in paths if not (REPO / p.rstrip("/")).exists()]
    assert not missing, f"{path.relative_to(REPO)} names paths that do not exist: {missing}"


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    for bad in (".venv/bin/ssb curate --no-such-flag", ".venv/bin/ssb curate curate.rollout.n=0",
                ".venv/bin/ssb curate --config configs/missing.yaml", ".venv/bin/ssb sweep train.ce_weight=0,-1",
                ".venv/bin/ssb serve serve.api.port=http", "make no-such-target",
                "curl -s localhost:8000/v1/no-such-route", "frobnicate --now"):
        with pytest.raises((AssertionError, ValueError, OSError)):
            check_command(bad)
    page = tmp_path / "page.md"
    page.write_text("# A `code` heading: here\n\n[ok](#a-code-heading-here) [gone](missing.md) [bad](#nope)\n")
    assert anchors(page) == {"a-code-heading-here"}
    assert relative_links(page) == ["#a-code-heading-here", "missing.md", "#nope"]
