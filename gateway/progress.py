"""Progress of long commands on a terminal: rows read, rows per second, stage.

A statewide upload runs for minutes; without a sign of life an operator cannot tell
a slow upload from a stuck one. Progress goes to standard error, drawn by ``rich``,
and only when standard error is a terminal and ``--json`` was not asked, so scripts,
logs and pipes see nothing but the command's output. It never shows a value from
the file, only counts.

``rich`` is imported only when progress is drawn: ``gateway --help`` and commands
run from scripts do not pay for it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.ingest.upload import UploadProgress


def wanted(*, as_json: bool) -> bool:
    """Whether to draw progress: on a terminal, and not for ``--json``."""
    return not as_json and sys.stderr.isatty()


@contextmanager
def upload_progress(*, enabled: bool) -> Iterator[Callable[[UploadProgress], None] | None]:
    """A callback for :func:`gateway.ingest.upload_extract` that draws its progress
    (``None`` when not ``enabled``); the bar is removed when the block ends."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    start = time.monotonic()
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}% of the file"),
        TextColumn("{task.fields[rows]} rows read, {task.fields[rate]} rows/s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("reading", total=None, rows="0", rate="-")

        def show(progress: UploadProgress) -> None:
            elapsed = max(time.monotonic() - start, 1e-6)
            bar.update(
                task,
                description=progress.stage,
                completed=progress.bytes_read or None,
                total=progress.bytes_total if progress.bytes_read else None,
                rows=f"{progress.rows_read:,}",
                rate=f"{progress.rows_read / elapsed:,.0f}",
            )

        yield show


@contextmanager
def stage(label: str, *, enabled: bool) -> Iterator[None]:
    """A spinner with ``label`` and the time elapsed while the block runs (a long
    release, say), when ``enabled``."""
    if not enabled:
        yield
        return
    from rich.console import Console

    console: Any = Console(stderr=True)
    with console.status(label):
        yield
