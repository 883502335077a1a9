"""Run every benchmark and record the results in bench/RESULTS.md.

    python -m bench.run            (or: make bench)
    python -m bench.run utility    (the named suites only)

Timings on these shared machines are noisy, so each benchmark is compared with
a baseline measured in the same run and reported as a ratio (gateway / baseline:
below 1 is faster than the baseline).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{memory}, Python {platform.python_version()}"


def table(rows: list[dict[str, Any]]) -> str:
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(row[h]) for h in headers) + " |" for row in rows]
    return "\n".join(lines)


def main(selected: list[str]) -> None:
    from bench import (
        bench_audit,
        bench_cli,
        bench_pseudonym,
        bench_release,
        bench_upload,
        http_load,
        scale,
        utility,
    )

    # A suite returns rows of one table, or (utility, scale) its own markdown.
    suites: dict[str, Callable[[], list[dict[str, Any]] | str]] = {
        "pseudonym": bench_pseudonym.run,
        "upload": bench_upload.run,
        "release": bench_release.run,
        "cli": bench_cli.run,
        "scale": scale.run,
        "http": http_load.run,
        "audit": bench_audit.run,
        "utility": utility.run,
    }
    sections = []
    for name, suite in suites.items():
        if selected and name not in selected:
            continue
        print(f"running {name} ...", flush=True)
        result = suite()
        body = result if isinstance(result, str) else table(result)
        sections.append(f"### {name}\n\n{body}\n")
        print(body, flush=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    entry = f"## Run of {stamp}\n\nMachine: {machine()}\n\n" + "\n".join(sections)
    previous = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    head, _, rest = previous.partition("\n## ")
    RESULTS.write_text(f"{head.rstrip()}\n\n{entry}\n" + (f"## {rest}" if rest else ""))
    print(f"recorded in {RESULTS}")


if __name__ == "__main__":
    main(sys.argv[1:])
