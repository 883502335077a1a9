"""The documentation keeps up with the code: every command, setting, event kind,
route, error code, query field and measure kind appears in its page, each error
code with its HTTP and exit status, the README links every page (the compliance
guide by name), and the commands shown to reviewers exist."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, get_args

import click
import pytest

import gateway
from gateway import audit
from gateway.app import create_app
from gateway.cli import main
from gateway.config import Settings
from gateway.errors import GatewayError
from gateway.release.query import Measure, Query

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"

# Routes FastAPI adds for its own documentation; not part of the gateway's API.
FRAMEWORK_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def read(relative: str) -> str:
    return (REPO / relative).read_text(encoding="utf-8")


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[str]:
    """Every command of the click tree, groups included, as "keys rotate"."""
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        yield " ".join(path)
        if isinstance(command, click.Group):
            yield from command_paths(command, path)


def route_paths(routes: Iterable[Any], prefix: str = "") -> Iterator[str]:
    """Paths of every route, looking inside included routers (newer FastAPI
    versions keep an included router as one entry of ``app.routes``)."""
    for route in routes:
        path = getattr(route, "path", None)
        if isinstance(path, str):
            yield prefix + path
            continue
        included = getattr(route, "original_router", None)
        if included is not None:
            context = getattr(route, "include_context", None)
            yield from route_paths(included.routes, prefix + getattr(context, "prefix", ""))


def error_classes() -> list[type[GatewayError]]:
    """GatewayError and every subclass defined in the package.

    Importing every module first (gateway.ingest and gateway.api.uploads among
    them) registers all subclasses, so the answer does not depend on which
    other tests happened to import what. Alembic migrations only run inside
    Alembic, so they are skipped.
    """
    for module in pkgutil.walk_packages(gateway.__path__, "gateway."):
        if not module.name.startswith("gateway.storage.migrations"):
            importlib.import_module(module.name)
    found: list[type[GatewayError]] = [GatewayError]
    pending = [GatewayError]
    while pending:
        for subclass in pending.pop().__subclasses__():
            if subclass.__module__.startswith("gateway.") and subclass not in found:
                found.append(subclass)
                pending.append(subclass)
    return found


def settings_fields() -> list[str]:
    return sorted(Settings.model_fields)


def measure_kinds() -> list[str]:
    """Every ``measure.kind`` a query accepts (the ``Literal`` of ``Measure.kind``)."""
    return sorted(get_args(Measure.model_fields["kind"].annotation))


def query_fields() -> list[str]:
    return sorted(Query.model_fields)


def test_walks_find_what_they_should() -> None:
    """Guards the tests below against passing vacuously."""
    assert {"init", "keys", "keys rotate", "audit verify"} <= set(command_paths(main))
    assert {"data_dir", "master_key_file"} <= set(settings_fields())
    app = create_app(Settings(_env_file=None))  # building the app opens nothing
    assert "/healthz" in set(route_paths(app.routes))
    codes = {error.code for error in error_classes()}
    assert {"not_found", "upload_refused", "upload_too_large"} <= codes
    assert {"count", "rate"} <= set(measure_kinds())
    assert {"datasets", "measure", "epsilon"} <= set(query_fields())


@pytest.mark.parametrize("path", sorted(command_paths(main)))
def test_every_command_is_in_the_cli_page(path: str) -> None:
    assert f"gateway {path}" in read("docs/cli.md"), f"`gateway {path}` is not in docs/cli.md"


@pytest.mark.parametrize("field", settings_fields())
def test_every_setting_is_in_the_configuration_page(field: str) -> None:
    variable = f"GATEWAY_{field.upper()}"
    assert variable in read("docs/configuration.md"), f"{variable} is not in docs/configuration.md"


@pytest.mark.parametrize("kind", sorted(audit.EVENT_KINDS))
def test_every_audit_event_kind_is_in_the_audit_page(kind: str) -> None:
    assert f"`{kind}`" in read("docs/audit.md"), f"event kind {kind} is not in docs/audit.md"


@pytest.mark.parametrize("kind", measure_kinds())
def test_every_measure_kind_is_in_the_releases_page(kind: str) -> None:
    page = read("docs/releases.md")
    assert f"`{kind}`" in page, f"measure kind {kind} is not in docs/releases.md"


@pytest.mark.parametrize("field", query_fields())
def test_every_query_field_is_in_the_releases_page(field: str) -> None:
    page = read("docs/releases.md")
    assert f"`{field}`" in page, f"query field {field} is not in docs/releases.md"


def test_every_route_is_in_the_api_page() -> None:
    app = create_app(Settings(_env_file=None))
    page = read("docs/api.md")
    missing = sorted(
        path
        for path in set(route_paths(app.routes)) - FRAMEWORK_ROUTES
        if f"`{path}`" not in page and f" {path}`" not in page
    )
    assert not missing, f"routes missing from docs/api.md: {missing}"


def test_every_error_code_is_in_the_api_page() -> None:
    page = read("docs/api.md")
    missing = sorted({e.code for e in error_classes()} - set(re.findall(r"`([a-z_]+)`", page)))
    assert not missing, f"error codes missing from docs/api.md: {missing}"


def http_only(error: type[GatewayError]) -> bool:
    """Errors raised only by the HTTP adapters have no CLI exit status of their own."""
    return error.__module__.startswith("gateway.api.")


def test_the_api_error_table_gives_each_code_its_status_and_exit_status() -> None:
    rows = {
        match[1]: (match[2], match[3].strip())
        for match in re.finditer(
            r"^\| `([a-z_]+)` \| (\d+) \| ([^|]+) \|", read("docs/api.md"), re.M
        )
    }
    wrong = []
    for error in error_classes():
        exit_status = "(HTTP only)" if http_only(error) else str(error.exit_code)
        if rows.get(error.code) != (str(error.status), exit_status):
            wrong.append(f"{error.code}: documented {rows.get(error.code)}")
    assert not wrong, f"docs/api.md error table disagrees with the code: {wrong}"


def test_the_cli_exit_status_table_lists_each_code_under_its_status() -> None:
    listed: dict[str, str] = {}
    for match in re.finditer(r"^\| (\d+) \|.*\| ([^|]*) \|$", read("docs/cli.md"), re.M):
        for code in re.findall(r"`([a-z_]+)`", match[2]):
            listed[code] = match[1]
    wrong = sorted(
        f"{error.code}: documented {listed.get(error.code)}, is {error.exit_code}"
        for error in error_classes()
        if not http_only(error) and listed.get(error.code) != str(error.exit_code)
    )
    assert not wrong, f"docs/cli.md exit status table disagrees with the code: {wrong}"


def test_readme_has_the_two_setup_commands() -> None:
    readme = read("README.md")
    assert "## Quick start" in readme
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "make run" in quick_start and "make test" in quick_start


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_readme_links_every_docs_page(page: str) -> None:
    assert f"](docs/{page})" in read("README.md"), f"README.md does not link docs/{page}"


def test_readme_links_the_compliance_guide() -> None:
    """Named on its own, so deleting the page fails here rather than shrinking the
    parametrised check above."""
    assert (DOCS / "compliance.md").is_file()
    assert "](docs/compliance.md)" in read("README.md")


def code_in(page: str) -> Iterator[str]:
    """The code of a Markdown page: backtick spans, fenced blocks and indented lines."""
    text = read(page)
    yield from re.findall(r"`([^`\n]+)`", text)
    yield from re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
    yield from re.findall(r"^(?: {4,}|\t)(.+)$", text, re.M)


@pytest.mark.parametrize("page", ["docs/compliance.md", "docs/audit.md"])
def test_commands_shown_to_reviewers_exist(page: str) -> None:
    commands = set(command_paths(main))
    groups = {path.split(" ", 1)[0] for path in commands if " " in path}
    shown = {
        match
        for code in code_in(page)
        for match in re.findall(r"(?:^|[\s/$])gateway ([a-z][a-z-]*(?: [a-z][a-z-]*)?)", code)
    }

    def exists(words: str) -> bool:
        # "release foo": a command that is not a group takes "foo" as an argument.
        first = words.split(" ", 1)[0]
        return words in commands or (first in commands and first not in groups)

    assert {"audit export", "audit verify"} <= shown
    unknown = sorted(words for words in shown if not exists(words))
    assert not unknown, f"{page} shows commands the CLI does not have: {unknown}"


def resolve_command(words: list[str]) -> tuple[click.Command, list[str]] | None:
    """The command named by the leading words of ``words``, and the words left."""
    command: click.Command = main
    rest = list(words)
    while isinstance(command, click.Group) and rest and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    return (command, rest) if command is not main else None


@pytest.mark.parametrize("page", ["docs/compliance.md", "docs/audit.md", "docs/cli.md"])
def test_options_shown_with_commands_exist(page: str) -> None:
    """Every ``--option`` written after ``gateway COMMAND`` on one line is an option of
    that command (or the global ``--help``)."""
    wrong = []
    for code in code_in(page):
        for line in code.splitlines():
            for match in re.finditer(r"(?:^|[\s/$])gateway ((?:[a-z][a-z-]* ?)+)(.*)", line):
                found = resolve_command(match[1].split())
                if found is None:
                    continue
                command, _ = found
                known = {opt for param in command.params for opt in param.opts} | {"--help"}
                for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", match[2]):
                    if option not in known:
                        wrong.append(f"gateway {command.name} {option}")
    assert not wrong, f"{page} shows options the commands do not have: {sorted(set(wrong))}"


def test_the_export_columns_are_documented() -> None:
    for page in ("docs/cli.md", "docs/compliance.md"):
        text = read(page)
        missing = [column for column in audit.EXPORT_COLUMNS if f"`{column}`" not in text]
        assert not missing, f"CSV export columns missing from {page}: {missing}"


def test_the_compliance_guide_covers_termination() -> None:
    page = read("docs/compliance.md")
    assert "gateway agreements terminate" in page
    for kind in ("agreement-terminated", "key-destroyed", "data-destroyed"):
        assert f"`{kind}`" in page, f"{kind} is not in docs/compliance.md"
    not_yet = page.split("## What is not available yet", 1)[1]
    for feature in ("Termination with destruction receipts", "CSV export", "budget history"):
        assert feature not in not_yet, f"{feature!r} is still listed as not available"


def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation but hyphens
    and underscores dropped, spaces as hyphens."""
    headings = re.findall(r"^#{1,6} (.+?)\s*$", page.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


LINKED_PAGES = ["README.md", "keys/README.md", *(f"docs/{p.name}" for p in DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", sorted(LINKED_PAGES))
def test_links_between_pages_resolve(page: str) -> None:
    """Every relative link of the README and the docs names a file of the repository,
    and its #anchor a heading of that page."""
    source = REPO / page
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", source.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        linked = (source.parent / path).resolve() if path else source
        missing_anchor = (
            linked.exists()
            and anchor
            and linked.suffix == ".md"
            and anchor not in heading_anchors(linked)
        )
        if not linked.exists() or missing_anchor:
            broken.append(target)
    assert not broken, f"{page} links to what is not there: {broken}"


def test_the_readme_names_no_file_outside_the_repository() -> None:
    """The README is read on a fresh clone: no "SPEC section 4" and no page that is
    not in it."""
    readme = read("README.md")
    assert "SPEC" not in readme
    for name in re.findall(r"`([\w./-]+\.(?:md|py|yaml|toml|txt))`", readme):
        assert (REPO / name).exists() or any(REPO.glob(f"*/{name}")), name


def test_the_readme_puts_the_two_commands_on_the_first_screen() -> None:
    """What the gateway does, for whom, and the two commands, within the first 40 lines."""
    first_screen = "\n".join(read("README.md").splitlines()[:40])
    assert "make run" in first_screen and "make test" in first_screen
    for reader in ("district", "EPP", "reviewer", "operator"):
        assert reader in first_screen, reader


def test_each_guarantee_links_its_evidence() -> None:
    readme = read("README.md")
    guarantees = readme.split("## What it guarantees", 1)[1].split("\n## ", 1)[0]
    items = re.findall(r"^- (.+?)(?=^- |\Z)", guarantees, re.M | re.S)
    assert len(items) >= 8
    for item in items:
        assert "](docs/compliance.md#" in item, item[:60]
