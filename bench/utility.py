"""Utility of the released tables: what a partnership actually receives from its reports.

    python -m bench.utility [--without-tumult] [--tumult-flat-map]
                            [--epsilon-scales 1,2,4,8,16,64] [--sweep-only] [--sweep-tumult]
    python -m bench.run utility      (records it in bench/RESULTS.md; so does `make bench`)

Two corpora, each in a throwaway gateway folder (never the repo's ``demo/``):

- **demo**: the four example agreements (``agreements/``) on the extracts ``gateway
  demo`` generates (its seed, 2026, at full scale), and the same pass: every report of
  every agreement, with its default parameters, for each of its recipients;
- **small partnership**: ``bench/agreements/small-partnership.yaml`` (the demo's reports
  in one agreement) on one district of about 300 teachers and one EPP of about 20
  completers a year, over the generator's five school years.

For each released table (a partnership release is counted once, however many recipients
receive it), measured against the true data, which the benchmark computes itself from
the rows the release read (release/rows.py, release/aggregate.py: the table as asked,
before the bound on groups per teacher) and prints only as shares and mean errors,
never cell by cell:

- **cells suppressed outright**: of the table's cells as asked, those no published cell
  covers, as asked or coarsened (for a table that does not coarsen: the cells marked
  ``suppressed``);
- **teachers represented**: of the teachers behind the table's cells as asked (a teacher
  once per cell they count in; for rows of counts, the candidates counted), those in a
  cell published at the requested level or one coarsening step above it (a cell's
  ``steps``, absent or 0 when as asked; coarse cells are matched to the cells as asked
  through the agreement's hierarchies);
- **useful values**: published values whose 95% half-width (half the interval) is at
  most 25% of the value (counts, sums, means) or at most 0.10 (shares);
- **mean absolute error**, |released - true| over the table's released cells, where a
  cell without a value (suppressed, or coded "<5%") counts as |true value|, as if read
  as 0: the recipient learns no number there. A coarse cell is compared with the true
  value of the cells it covers. The same table from Tumult Analytics at the same
  epsilon (one teacher as the privacy unit, the same clamps and bound on groups per
  teacher; bench/tumult_utility.py, in its own environment) is pooled into the same
  released cells (its counts added; an average as its pooled sums over its pooled
  counts) and compared with the same truths: the target's comparison. Beside it,
  Tumult's error over its own cells (the table as asked, all published), and both on
  the cells the gateway published. Each system draws its noise once: one table's error
  is itself noisy.

Then the calibration report's weighted kappa (published or not, its half-width when the
summary gives an interval), the race/ethnicity and gender groups the diversity report
publishes at each stage, what the pass leaves of each period's budget, and the totals
against the issue's targets. Released-exactly tables (posted positions: no noise, no
minimum) are listed but left out of the totals: they measure no privacy mechanism.

Last, the **budget sweep** (``--epsilon-scales``, 1,2,4,8,16,64 by default): what budget
the questions need. For each scale, the same pass on both corpora in a fresh gateway
folder, every report's epsilon (its default) multiplied by the scale and passed as its
``epsilon`` parameter, on a throwaway copy of the agreement files whose
``per_release_cap``, ``period_budget`` and ``privacy_budget`` (and any recipient's
``budget_limits``) are raised by disclosure overrides just as far as the pass needs
(:func:`scale_agreement`; the repo's agreements are never changed, the generated data
never grows). One row per (corpus, scale): the epsilon the pass spent, its share of the
budget the agreement signs today, the totals above and the kappa's half-width and the
diversity groups, then the scale from which each target is met. The last default
scale, x64, is a ceiling rather than a budget: its noise is a fraction of a teacher, so
what it leaves unpublished is held back by the minimum cell, complementary suppression
and coarsening alone. Tumult is left out of the sweep unless ``--sweep-tumult`` asks.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from bench.tumult_utility import AVERAGED, COUNTED, reduce_teacher

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
TUMULT_PYTHON = BENCH / ".venvs" / "tumult" / "bin" / "python"

#: Measures whose values are shares in [0, 1]: useful within +-0.10; the others within 25%.
SHARES = frozenset({"rate", "retention", "agreement"})
#: A bound no teacher reaches: the true table before contribution bounding.
UNBOUNDED = 10**9
#: The diversity report's stages (completion_status -> stage); "withdrawn" is shown but
#: is not a stage of the pipeline.
STATUS_STAGES = {"in_progress": "candidates", "completed": "completers", "withdrawn": "withdrawn"}
PIPELINE_STAGES = ("candidates", "completers", "hired", "retained")

# The targets.
TARGET_REPRESENTED = 0.95
TARGET_SUPPRESSED = 0.05
TARGET_USEFUL = 0.85
TARGET_KAPPA_HALF_WIDTH = 0.15
TARGET_GROUPS = 2
TARGET_BUDGET_LEFT = 0.5
USEFUL_RELATIVE = 0.25
USEFUL_ABSOLUTE = 0.10


LEGEND = """\
How to read it (bench/utility.py says more): *threshold*: the noisy count a cell must
reach to be published. *cells*: as asked (as released: fewer when coarsened).
*suppressed outright*: cells as asked that no published cell covers, as asked or
coarsened. *teachers at ≤1 step*: the teachers behind the table as asked (once per cell
they count in) who are in a cell published as asked or one coarsening step above.
*useful values*: published values whose 95% half-width is at most 25% of the value
(counts, sums, means) or at most 0.10 (shares). *MAE gateway*: mean |released - true|
over the released cells, a cell without a value counting |true|. *MAE Tumult (same
cells)*: Tumult's table at the same epsilon, its cells pooled into the gateway's
released cells (counts added; averages as pooled sums over pooled counts), compared with
the same truths: the target's comparison. *MAE Tumult (as asked)*: over Tumult's own
cells, every one published. Last column: both on the cells the gateway published. One
noise draw each. Exact tables (posted positions) are left out of the totals. Tumult
expresses every noisy table here (one teacher per ID, the same per-teacher reduction,
MaxGroupsPerID, MaxRowsPerGroupPerID(1), the same clamps); it has nothing like the
gateway's publish threshold, minimum-cell floor, complementary suppression, top/bottom
coding or coarsening, and releases no table exactly. The weighted kappa is
post-processing: computed here from Tumult's joint table.
"""


@dataclass(frozen=True)
class Corpus:
    name: str
    agreements_dir: Path
    seed: int
    scale: float
    epp_scale: float | None = None


DEMO = Corpus("demo", REPO / "agreements", seed=2026, scale=1.0)  # gateway demo's seed
#: Scale 1/3 gives the district 300 teachers; the EPP's cohorts at 0.15 give about 20
#: completers a year with this agreement's six programs (measured, seed 2026: 20.2).
SMALL = Corpus("small partnership", BENCH / "agreements", seed=2026, scale=1 / 3, epp_scale=0.15)


# --- the metrics: pure functions of a release's JSON and the true cells ------------------


@dataclass(frozen=True)
class Leaf:
    """One cell of a table as asked, from the true data (never printed on its own)."""

    key: tuple[Any, ...]
    teachers: int  # or, for rows of counts, the units counted
    total: float = 0.0  # clamped sum (sums, means)
    meeting: int = 0  # numerator (shares)


HierarchyOf = Callable[[str], Any]  # dimension -> its Hierarchy, or None


def key_text(values: Iterable[Any]) -> str:
    """A cell's key as the Tumult side spells it: a compact JSON list."""
    plain = [int(v) if isinstance(v, float) and v.is_integer() else v for v in values]
    return json.dumps(plain, separators=(",", ":"), default=str)


def steps_of(cell: Mapping[str, Any]) -> int:
    """How many coarsening steps above the requested level a cell stands (0: as asked)."""
    return int(cell.get("steps") or 0)


def half_width(cell: Mapping[str, Any]) -> float | None:
    """Half the 95% interval of a published value (None without one)."""
    ci = cell.get("ci95")
    if cell.get("suppressed") or cell.get("value") is None or not ci:
        return None
    return (float(ci[1]) - float(ci[0])) / 2


def is_useful(cell: Mapping[str, Any], kind: str) -> bool:
    """A published value precise enough to act on (the issue's thresholds)."""
    width = half_width(cell)
    if width is None:
        return False
    if kind in SHARES:
        return width <= USEFUL_ABSOLUTE
    value = float(cell["value"])
    return value > 0 and width <= USEFUL_RELATIVE * value


def _covered_values(
    value: Any, level: str | None, hierarchy: Any, asked: Sequence[Any]
) -> list[Any]:
    """The values as asked that a cell's ``value`` (at ``level``) stands for."""
    if hierarchy is None or level is None or level not in hierarchy.level_names:
        return [v for v in asked if v == value]  # as asked ("as asked" is no level name)
    index = hierarchy.level_index(level)
    if index == len(hierarchy.levels):  # the top: every value
        return list(asked)
    if hierarchy.levels[index].pool is not None:  # a window of years ("2023" en dash "2025")
        years = [int(y) for y in re.findall(r"\d{4}", str(value))]
        return [v for v in asked if years and years[0] <= int(v) <= years[-1]]
    covered = []
    for v in asked:
        try:
            if hierarchy.parent(v, index) == value:
                covered.append(v)
        except Exception:  # a value the hierarchy does not place: not covered
            continue
    return covered


def covered_leaves(
    cell: Mapping[str, Any],
    dimensions: Sequence[str],
    leaves: Mapping[str, Leaf],
    hierarchy_of: HierarchyOf,
) -> list[str]:
    """The keys of the cells as asked that a released cell covers (itself, when as asked)."""
    levels = cell.get("level") or {}
    group = cell["group"]
    allowed = []
    for position, dimension in enumerate(dimensions):
        asked = sorted({leaf.key[position] for leaf in leaves.values()}, key=str)
        hierarchy = hierarchy_of(dimension) if dimension in levels else None
        covered = _covered_values(group.get(dimension), levels.get(dimension), hierarchy, asked)
        allowed.append({key_text([v]) for v in covered})
    return [
        text
        for text, leaf in leaves.items()
        if all(key_text([v]) in allowed[i] for i, v in enumerate(leaf.key))
    ]


def true_value(kind: str, leaves: Sequence[Leaf]) -> float | None:
    """The true value of a cell made of ``leaves`` (None where it has no teachers)."""
    teachers = sum(leaf.teachers for leaf in leaves)
    if kind in COUNTED:
        return float(teachers)
    if kind == "sum":
        return float(sum(leaf.total for leaf in leaves))
    if not teachers:
        return None
    if kind == "mean":
        return sum(leaf.total for leaf in leaves) / teachers
    return sum(leaf.meeting for leaf in leaves) / teachers  # a share


@dataclass
class TableMetrics:
    cells: int = 0  # as asked
    released: int = 0  # as released (fewer when cells are coarsened)
    suppressed: int = 0  # cells as asked that no published cell covers
    coded: int = 0
    published_by_step: dict[int, int] = field(default_factory=dict)
    values: int = 0  # published cells with a number
    useful: int = 0
    teachers: int = 0
    represented: int = 0  # in a published cell at the requested level or one step up
    represented_as_asked: int = 0
    errors: list[float] = field(default_factory=list)  # every released cell
    published_errors: list[float] = field(default_factory=list)

    @property
    def mae(self) -> float | None:
        return sum(self.errors) / len(self.errors) if self.errors else None

    @property
    def published_mae(self) -> float | None:
        return (
            sum(self.published_errors) / len(self.published_errors)
            if self.published_errors
            else None
        )


def table_metrics(
    cells: Sequence[Mapping[str, Any]],
    *,
    kind: str,
    dimensions: Sequence[str],
    leaves: Mapping[str, Leaf],
    hierarchy_of: HierarchyOf = lambda _dimension: None,
) -> TableMetrics:
    """Every per-table figure of the module docstring, from one release's cells."""
    out = TableMetrics(
        cells=len(leaves),
        released=len(cells),
        teachers=sum(leaf.teachers for leaf in leaves.values()),
    )
    shown: set[str] = set()  # leaves in a published cell, at any step
    near: set[str] = set()  # leaves in a published cell at most one step up
    exact: set[str] = set()
    for cell in cells:
        covered = covered_leaves(cell, dimensions, leaves, hierarchy_of)
        truth = true_value(kind, [leaves[k] for k in covered])
        published = not cell.get("suppressed")
        value = cell.get("value")
        if published:
            shown.update(covered)
            step = steps_of(cell)
            out.published_by_step[step] = out.published_by_step.get(step, 0) + 1
            if step <= 1:
                near.update(covered)
            if step == 0:
                exact.update(covered)
            if value is None:
                out.coded += 1
            else:
                out.values += 1
                out.useful += is_useful(cell, kind)
        if truth is not None:
            error = abs(truth) if value is None or not published else abs(float(value) - truth)
            out.errors.append(error)
            if published and value is not None:
                out.published_errors.append(error)
    out.suppressed = len(leaves) - len(shown)
    out.represented = sum(leaves[k].teachers for k in near)
    out.represented_as_asked = sum(leaves[k].teachers for k in exact)
    return out


def tumult_estimate(
    answer: Mapping[str, Mapping[str, float]],
    keys: Sequence[str],
    *,
    kind: str,
    clamp: tuple[float, float],
) -> float | None:
    """Tumult's value for the cell made of the cells as asked ``keys``: the sum of their
    counts (each clipped at 0), or for an average the sum of their centred sums over
    the sum of their counts, clamped: post-processing of Tumult's table, as a recipient
    would do it and as the gateway does."""
    counts = answer.get("counts", {})
    if not keys or any(k not in counts for k in keys):
        return None
    if kind not in AVERAGED:
        return sum(max(counts[k], 0.0) for k in keys)
    sums = answer.get("sums", {})
    if any(k not in sums for k in keys):
        return None
    teachers = sum(counts[k] for k in keys)
    middle = (clamp[0] + clamp[1]) / 2
    value = middle + sum(sums[k] for k in keys) / max(teachers, 1.0)
    return min(max(value, clamp[0]), clamp[1])


def tumult_errors(
    answer: Mapping[str, Mapping[str, float]],
    *,
    kind: str,
    leaves: Mapping[str, Leaf],
    clamp: tuple[float, float],
) -> list[float]:
    """|Tumult - true| over Tumult's own cells: the table as asked, every cell published."""
    errors = []
    for text, leaf in leaves.items():
        truth = true_value(kind, [leaf])
        estimate = tumult_estimate(answer, [text], kind=kind, clamp=clamp)
        if truth is not None and estimate is not None:
            errors.append(abs(estimate - truth))
    return errors


@dataclass
class SideBySide:
    """Both systems' errors on the gateway's released cells (Tumult's cells pooled into
    each one), and on those the gateway published with a value."""

    gateway: list[float] = field(default_factory=list)
    tumult: list[float] = field(default_factory=list)
    gateway_published: list[float] = field(default_factory=list)
    tumult_published: list[float] = field(default_factory=list)


def side_by_side(
    cells: Sequence[Mapping[str, Any]],
    answer: Mapping[str, Mapping[str, float]],
    *,
    kind: str,
    dimensions: Sequence[str],
    leaves: Mapping[str, Leaf],
    clamp: tuple[float, float],
    hierarchy_of: HierarchyOf = lambda _dimension: None,
) -> SideBySide:
    """The gateway's error on each released cell (a cell without a value: |true|) beside
    Tumult's on the same cell, made of the same cells as asked."""
    out = SideBySide()
    for cell in cells:
        covered = covered_leaves(cell, dimensions, leaves, hierarchy_of)
        truth = true_value(kind, [leaves[k] for k in covered])
        theirs = tumult_estimate(answer, covered, kind=kind, clamp=clamp)
        if truth is None or theirs is None:
            continue
        value = None if cell.get("suppressed") else cell.get("value")
        ours = abs(truth) if value is None else abs(float(value) - truth)
        out.gateway.append(ours)
        out.tumult.append(abs(theirs - truth))
        if value is not None:
            out.gateway_published.append(ours)
            out.tumult_published.append(abs(theirs - truth))
    return out


def budget_left(report: Mapping[str, Any]) -> tuple[str, str, float, float]:
    """(agreement, period, epsilon remaining, epsilon total) of a budget report: the
    school year in force when the agreement gives each year its own budget ("period"),
    else the agreement's whole life, its one period."""
    period = report.get("period")
    if period:
        label = f"school year {period.get('label') or period.get('school_year')}"
        return report["agreement"], label, float(period["remaining"]), float(period["total"])
    return report["agreement"], "its whole life", float(report["remaining"]), float(report["total"])


def kappa_entries(summary: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Each weighted kappa a table's summary gives: published or not, and its half-width
    where the entry carries a 95% interval ("ci95") or a half-width."""
    out = []
    for entry in (summary or {}).get("weighted_kappa", []):
        value = entry.get("value")
        width = None
        if entry.get("ci95"):
            low, high = entry["ci95"]
            width = (float(high) - float(low)) / 2
        elif entry.get("half_width") is not None:
            width = float(entry["half_width"])
        out.append(
            {
                "group": entry.get("group") or {},
                "published": value is not None,
                "value": value,
                "half_width": width,
                "note": entry.get("note", ""),
            }
        )
    return out


def diversity_groups(
    tables: Sequence[tuple[str, Sequence[Mapping[str, Any]]]], *, tops: Iterable[str] = ()
) -> dict[str, dict[str, list[str]]]:
    """Stage -> {"race_ethnicity": groups, "gender": groups} published by the diversity
    report; ``tables`` are (measure kind, cells). A stage's groups are the values (or
    coarse labels) of that dimension in a published cell; the top of a hierarchy ("all
    races and ethnicities") is no group and is left out."""
    hidden = set(tops)
    stages: dict[str, dict[str, set[str]]] = {}
    for kind, cells in tables:
        for cell in cells:
            group = cell["group"]
            if "completion_status" in group:
                status = str(group["completion_status"])
                stage = STATUS_STAGES.get(status, status)
            else:
                stage = "retained" if kind == "retention" else "hired"
            found = stages.setdefault(stage, {"race_ethnicity": set(), "gender": set()})
            if cell.get("suppressed"):
                continue
            for dimension in ("race_ethnicity", "gender"):
                value = group.get(dimension)
                if value is not None and str(value) not in hidden:
                    found[dimension].add(str(value))
    return {
        stage: {d: sorted(values) for d, values in dims.items()} for stage, dims in stages.items()
    }


# --- running the reports -----------------------------------------------------------------------


@dataclass
class Table:
    """One released table (a partnership release), with what judging it needs."""

    table_id: str
    corpus: str
    agreement: Any  # gateway.agreements.Agreement
    report: str
    title: str
    recipients: list[str]
    release: dict[str, Any]
    summary: dict[str, Any] | None
    kind: str
    exact: bool
    epsilon: float
    dimensions: list[str]
    leaves: dict[str, Leaf]
    clamp: tuple[float, float]
    tumult: dict[str, Any] | None = None  # the spec given to bench/tumult_utility.py
    tumult_note: str = ""
    input_check: str = ""


@dataclass
class CorpusRun:
    corpus: Corpus
    tables: list[Table]
    refused: list[str]
    budgets: list[dict[str, Any]]
    sizes: str
    seconds: float
    #: Tables a report left out of its run, and why (a retention whose window of years
    #: cannot hold anyone): nothing released, nothing spent.
    left_out: list[str] = field(default_factory=list)


def _settings(corpus: Corpus, folder: Path, agreements_dir: Path | None = None) -> Any:
    from gateway.config import Settings
    from gateway.demo import demo_settings

    base = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=folder / "data",
        agreements_dir=agreements_dir or corpus.agreements_dir,
        policies_dir=REPO / "policies",
    )
    return demo_settings(folder, base)


def run_corpus(
    corpus: Corpus,
    folder: Path,
    *,
    agreements_dir: Path | None = None,
    epsilons: Mapping[tuple[str, str], Decimal] | None = None,
    tumult_inputs: bool = True,
) -> CorpusRun:
    """Generate, upload, run every report for every recipient; judge each table.

    ``agreements_dir`` replaces the corpus's agreements (the budget sweep's scaled
    copies); ``epsilons`` gives a report's epsilon, by (agreement, report), passed as
    its ``epsilon`` parameter (else the report's default); without ``tumult_inputs``
    no table's rows are prepared for Tumult."""
    from gateway import audit
    from gateway.context import Gateway, initialise
    from gateway.errors import GatewayError
    from gateway.ingest import UploadRefused, upload_extract
    from gateway.release.budget import budget_report
    from gateway.release.reports import list_reports, run_report
    from gateway_synthetic import generate_agreement_extracts

    start = time.perf_counter()
    settings = _settings(corpus, folder, agreements_dir)
    initialise(settings)
    tables: dict[str, Table] = {}
    refused: list[str] = []
    left_out: list[str] = []
    with Gateway.open(settings) as gw:
        agreements = sorted(gw.registry.agreements.values(), key=lambda a: a.id)
        sizes = []
        for agreement in agreements:
            extracts = generate_agreement_extracts(
                agreement,
                gw.registry.schemas,
                folder / "extracts",
                seed=corpus.seed,
                scale=corpus.scale,
                epp_scale=corpus.epp_scale,
            )
            for extract in extracts:
                try:
                    upload_extract(
                        gw,
                        agreement_id=agreement.id,
                        party=extract.party,
                        dataset=extract.dataset,
                        path=extract.path,
                        actor=audit.Actor(role="uploader", party=extract.party),
                    )
                except UploadRefused as error:
                    refused.append(f"upload {agreement.id}/{extract.dataset}: {error.message}")
            sizes.append(_size_line(agreement, extracts))
        for agreement in agreements:
            for listed in list_reports(agreement):
                given = (epsilons or {}).get((agreement.id, listed["name"]))
                parameters = {} if given is None else {"epsilon": decimal_text(given)}
                for party in listed["recipients"]:
                    try:
                        result = run_report(
                            gw,
                            agreement_id=agreement.id,
                            party=party,
                            report=listed["name"],
                            parameters=parameters,
                            actor=audit.Actor(role="analyst", party=party),
                        )
                    except GatewayError as error:
                        refused.append(
                            f"{agreement.id} / {listed['name']} for {party}: {error.message}"
                        )
                        continue
                    _collect(
                        gw,
                        corpus,
                        agreement,
                        listed["name"],
                        party,
                        result,
                        tables,
                        left_out=left_out,
                        tumult_inputs=tumult_inputs,
                    )
        with gw.sessions() as session:
            budgets = [budget_report(session, agreement) for agreement in agreements]
    return CorpusRun(
        corpus=corpus,
        tables=list(tables.values()),
        refused=refused,
        left_out=left_out,
        budgets=budgets,
        sizes="; ".join(sizes),
        seconds=time.perf_counter() - start,
    )


def _size_line(agreement: Any, extracts: Sequence[Any]) -> str:
    """Teachers a year in the district's staffing, completers a year at the EPP."""
    parts = []
    for extract in extracts:
        dataset = agreement.dataset(extract.dataset)
        if dataset.schema_name not in ("completers", "staffing"):
            continue
        frame = _read_any(extract.path).rename(columns=dict(dataset.header_map))
        if dataset.schema_name == "completers":
            done = frame[frame["completion_status"] == "completed"]
            per_year = done.groupby("cohort_year").size()
            parts.append(f"{per_year.mean():.0f} completers a year")
        else:
            teaching = frame[frame["position"].isin(["teacher", "co_teacher", "specialist"])]
            ids = teaching["educator_id"].astype(str).str.replace(" ", "").str.lstrip("0")
            per_year = ids.groupby(teaching["school_year"]).nunique()
            parts.append(f"{per_year.mean():.0f} teachers a year")
    return f"{agreement.id}: {', '.join(parts) or 'no people'}"


def _read_any(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".xlsx":
        return pd.read_excel(path)
    return pd.read_csv(path, dtype={"educator_id": str})


def _collect(
    gw: Any,
    corpus: Corpus,
    agreement: Any,
    report: str,
    party: str,
    result: Mapping[str, Any],
    tables: dict[str, Table],
    *,
    left_out: list[str] | None = None,
    tumult_inputs: bool = True,
) -> None:
    """Each table of a report's result not seen before, with its truth and Tumult input;
    a table the report left out (no release: it says why) is noted in ``left_out``."""
    for table in result["tables"]:
        if "release" not in table:
            note = f"{agreement.id} / {report}: {table['title']}: {table.get('skipped', '')}"
            if left_out is not None and note not in left_out:
                left_out.append(note)
            continue
        release = table["release"]
        release_id = release["release_id"]
        if release_id in tables:
            if party not in tables[release_id].recipients:
                tables[release_id].recipients.append(party)
            continue
        tables[release_id] = _judge(
            gw,
            corpus,
            agreement,
            report,
            party,
            table,
            table_id=f"{corpus.name.replace(' ', '-')}-{len(tables)}",
            tumult_inputs=tumult_inputs,
        )


def released_query(release: Mapping[str, Any]) -> Any:
    """The query a release answered, read back from its canonical form (its epsilon is
    the one the report gave this table). A table released exactly spent nothing and
    says epsilon 0, which no query may ask: any epsilon reads it back the same."""
    from gateway.release.query import parse_query

    body = dict(release["query"])
    if not float(body.get("epsilon") or 0):
        body["epsilon"] = "1"
    return parse_query(body)


def _judge(
    gw: Any,
    corpus: Corpus,
    agreement: Any,
    report: str,
    party: str,
    table: Mapping[str, Any],
    *,
    table_id: str,
    tumult_inputs: bool = True,
) -> Table:
    from gateway.release import aggregate, canonical, rows
    from gateway.release.plan import Composed, plan_query
    from gateway.release.query import resolve

    query = released_query(table["release"])
    resolved = canonical.normalise(
        resolve(query, agreement=agreement, registry=gw.registry, party=party), agreement
    )
    zcdp = table["release"]["noise"].get("zcdp")  # a report's table after others
    composed = (
        Composed(Decimal(zcdp["rho_before"]), Decimal(zcdp["report_epsilon"]))
        if zcdp and zcdp.get("report_epsilon")
        else None
    )
    plan = plan_query(resolved, agreement, composed)
    with gw.sessions() as session:
        frame = rows.read(session, resolved, agreement)
    found = aggregate.true_cells(frame, resolved, replace(plan, groups_per_teacher=UNBOUNDED))
    keys = plan.keys([()]) if not plan.private_positions else list(found)
    leaves: dict[str, Leaf] = {}
    for key in keys:
        cell = found.get(key)
        leaves[key_text(key)] = Leaf(
            key=tuple(key),
            teachers=cell.teachers if cell else 0,
            total=cell.total if cell else 0.0,
            meeting=cell.meeting if cell else 0,
        )
    kind = resolved.query.measure.kind
    clamp = tuple(plan.clamp) if plan.clamp else (0.0, 1.0)
    out = Table(
        table_id=table_id,
        corpus=corpus.name,
        agreement=agreement,
        report=report,
        title=table["title"],
        recipients=[party],
        release=dict(table["release"]),
        summary=table.get("summary"),
        kind=kind,
        exact=bool(plan.exact),
        epsilon=0.0 if plan.exact else float(query.epsilon),
        dimensions=list(plan.dimensions),
        leaves=leaves,
        clamp=(float(clamp[0]), float(clamp[1])),
    )
    if plan.exact:
        out.tumult_note = "exact (posted positions): no noise to compare"
    elif not tumult_inputs:
        out.tumult_note = "Tumult not run"
    elif plan.private_positions:
        out.tumult_note = "keys come from the data: not compared"
    elif kind not in COUNTED | AVERAGED and not (kind == "sum" and not resolved.linked):
        out.tumult_note = f"a {kind} is not mapped to Tumult in this benchmark"
    else:
        out.tumult, out.input_check = _tumult_input(frame, resolved, plan, out)
    return out


def _tumult_input(
    frame: pd.DataFrame, resolved: Any, plan: Any, table: Table
) -> tuple[dict[str, Any], str]:
    """The rows Tumult gets for a table (the same rows the gateway read, one column per
    value the table needs), and a check that reducing them per teacher gives the
    gateway's own true cells."""
    from gateway.release.plan import paired
    from gateway.release.query import retention_window

    group_cols = [f"{ref.dataset}.{ref.column}" for ref in resolved.group_by]
    measure_col = (
        f"{resolved.measure_field.dataset}.{resolved.measure_field.column}"
        if resolved.measure_field is not None
        else None
    )
    pair_cols = (
        [f"{r.dataset}.{r.column}" for r in paired(resolved)] if resolved.compare_field else []
    )
    needed = group_cols + ([measure_col] if measure_col else []) + pair_cols
    frame = frame.dropna(subset=needed)
    groups = (
        [key_text(values) for values in zip(*(frame[c].tolist() for c in group_cols), strict=True)]
        if group_cols
        else ["[]"] * len(frame)
    )
    spec: dict[str, Any] = {
        "kind": table.kind,
        "epsilon": table.epsilon,
        "groups_per_teacher": plan.groups_per_teacher,
        "clamp": list(table.clamp),
        "keys": list(table.leaves),
        "unit": "teacher",
    }
    if not resolved.linked:  # rows of counts: one row per counted person
        assert measure_col is not None and plan.clamp is not None
        counts = frame[measure_col].clip(*plan.clamp).round().astype(int).clip(lower=0)
        cells = pd.Series(groups, dtype=str).repeat(counts.to_numpy())
        tumult_rows = pd.DataFrame({"_cell": cells.to_numpy()}).astype({"_cell": str})
        spec["kind"], spec["unit"] = "count", "counted"
        made = tumult_rows["_cell"].value_counts().to_dict()
        wrong = [k for k, leaf in table.leaves.items() if made.get(k, 0) != round(leaf.total)]
        frames = {"frame": tumult_rows, "reduced_frame": tumult_rows}
        return {**spec, **frames}, _check_text(wrong, table)
    columns: dict[str, Any] = {
        "educator_ref": frame["educator_ref"].astype("int64").to_numpy(),
        "_group": groups,
    }
    if table.kind in ("distribution", "mean", "retention"):
        assert measure_col is not None
        name = "_y" if table.kind == "retention" else "_a"
        columns[name] = frame[measure_col].to_numpy()
    if pair_cols:
        columns["_a"] = frame[pair_cols[0]].to_numpy()
        columns["_b"] = frame[pair_cols[1]].to_numpy()
    spec_field = resolved.measure_field.spec if resolved.measure_field else None
    if table.kind == "mean" and spec_field is not None and spec_field.role == "student_measure":
        columns["_s"] = frame[
            f"{resolved.measure_field.dataset}.{spec_field.student_count_column}"
        ].to_numpy()
        spec["students_min"] = plan.students_per_teacher
    if table.kind == "retention":
        window = retention_window(resolved.measure_field, resolved.filters)
        assert window is not None
        spec["window"] = list(window)
        spec["years_after"] = resolved.query.measure.years_after
    tumult_rows = pd.DataFrame(columns)
    reduced = reduce_rows(tumult_rows, spec)
    check = _check_reduction(reduced, table)
    return {**spec, "frame": tumult_rows, "reduced_frame": reduced}, check


def reduce_rows(rows: pd.DataFrame, spec: Mapping[str, Any]) -> pd.DataFrame:
    """Every teacher's rows reduced as bench/tumult_utility.py's ``flat_map_by_id`` does:
    one row (educator_ref, _cell, _x) per teacher and cell."""
    out = [
        {"educator_ref": int(ref), **row}
        for ref, part in rows.groupby("educator_ref", sort=False)
        for row in reduce_teacher(part.to_dict("records"), spec)
    ]
    frame = pd.DataFrame(out, columns=["educator_ref", "_cell", "_x"])
    return frame.astype({"educator_ref": "int64", "_cell": str, "_x": "float64"})


def _check_reduction(reduced: pd.DataFrame, table: Table) -> str:
    """Each cell's teachers and sum after the per-teacher reduction Tumult is given,
    against the gateway's own true cells (aggregate.true_cells)."""
    teachers = reduced["_cell"].value_counts().to_dict()
    sums = reduced.groupby("_cell")["_x"].sum().to_dict()
    wrong = []
    for text, leaf in table.leaves.items():
        expected = leaf.total if table.kind == "mean" else float(leaf.meeting)
        sum_differs = table.kind in AVERAGED and abs(sums.get(text, 0.0) - expected) > 1e-6
        if teachers.get(text, 0) != leaf.teachers or sum_differs:
            wrong.append(text)
    return _check_text(wrong, table)


def _check_text(wrong: Sequence[str], table: Table) -> str:
    if not wrong:
        return ""
    return (
        f"Tumult's input differs from the gateway's true cells in {len(wrong)} of "
        f"{len(table.leaves)} cells"
    )


# --- Tumult -----------------------------------------------------------------------------------


def run_tumult(
    tables: Sequence[Table], folder: Path, *, flat_map: bool = False
) -> tuple[dict[str, Any], str]:
    """Every comparable table through bench/tumult_utility.py, in Tumult's environment.

    By default Tumult is given each teacher's rows already reduced (one row per teacher
    and cell, :func:`reduce_rows`): a transformation of one teacher's rows at a time,
    which changes nothing of the guarantee, and halves Tumult's time. ``flat_map``
    makes Tumult do the reduction itself, with ``flat_map_by_id``.
    """
    chosen = [t for t in tables if t.tumult is not None]
    if not chosen:
        return {}, "no table to compare"
    if not TUMULT_PYTHON.exists():
        return {}, f"Tumult is not installed ({TUMULT_PYTHON}; `make bench` installs it)"
    specs = {}
    for table in chosen:
        assert table.tumult is not None
        path = folder / f"{table.table_id}.parquet"
        reduced = not flat_map or table.tumult["unit"] != "teacher"
        frame = table.tumult["reduced_frame" if reduced else "frame"]
        frame.to_parquet(path, index=False)
        specs[table.table_id] = {
            **{k: v for k, v in table.tumult.items() if not k.endswith("frame")},
            "rows": str(path),
            "reduced": reduced,
        }
    spec_path, out_path = folder / "tumult-spec.json", folder / "tumult-out.json"
    spec_path.write_text(json.dumps(specs))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYSPARK_PYTHON"] = str(TUMULT_PYTHON)  # Spark's workers must use the same venv
    start = time.perf_counter()
    done = subprocess.run(
        [str(TUMULT_PYTHON), str(BENCH / "tumult_utility.py"), str(spec_path), str(out_path)],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
        cwd=folder,  # Spark writes its warehouse into the working folder
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {}, f"Tumult failed: {' | '.join(tail)}"
    out = json.loads(out_path.read_text())
    return out, (
        f"Tumult Analytics 0.21 ran {len(chosen)} tables in {time.perf_counter() - start:.0f} s "
        f"(Spark start {out['spark_startup_s']:.0f} s)"
    )


# --- the report ----------------------------------------------------------------------------------


def _hierarchy_of(agreement: Any) -> HierarchyOf:
    def find(dimension: str) -> Any:
        try:
            return agreement.field_hierarchy(dimension)
        except Exception:  # a dimension no dataset stores under that name
            return None

    return find


def _share(part: float, whole: float) -> str:
    return f"{part / whole:.0%} ({part:,.0f}/{whole:,.0f})" if whole else "-"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"


def _short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass
class Totals:
    cells: int = 0
    suppressed: int = 0
    values: int = 0
    useful: int = 0
    teachers: int = 0
    represented: int = 0
    represented_as_asked: int = 0
    compared: int = 0
    no_worse: int = 0


def corpus_section(
    run: CorpusRun, tumult: Mapping[str, Any], tumult_status: str
) -> tuple[str, dict[str, Any]]:
    """The markdown for one corpus, and its figures against the targets."""
    from bench.run import table as markdown_table

    rows, totals = [], Totals()
    kappas: list[str] = []
    kappa_ok: bool | None = None
    kappa_found: list[dict[str, Any]] = []
    diversity: list[tuple[str, Sequence[Mapping[str, Any]]]] = []
    tops: set[str] = set()
    for t in run.tables:
        cells = t.release["cells"]
        hierarchy_of = _hierarchy_of(t.agreement)
        m = table_metrics(
            cells, kind=t.kind, dimensions=t.dimensions, leaves=t.leaves, hierarchy_of=hierarchy_of
        )
        answer = tumult.get("tables", {}).get(t.table_id, {})
        beside, ours, theirs = _beside_tumult(t, cells, answer, tumult_status)
        if not t.exact and ours is not None and theirs is not None:
            totals.compared += 1
            totals.no_worse += ours <= theirs
        rows.append(_row(t, m, beside))
        if not t.exact:
            totals.cells += m.cells
            totals.suppressed += m.suppressed
            totals.values += m.values
            totals.useful += m.useful
            totals.teachers += m.teachers
            totals.represented += m.represented
            totals.represented_as_asked += m.represented_as_asked
        kappa_found += kappa_entries(t.summary)
        for line, ok in _kappa_lines(t, answer):
            kappas.append(line)
            kappa_ok = ok if kappa_ok is None else kappa_ok and ok
        if t.report == "diversity":
            diversity.append((t.kind, cells))
            hierarchy = _hierarchy_of(t.agreement)("race_ethnicity")
            if hierarchy is not None:
                tops.add(hierarchy.top)
    stages = diversity_groups(diversity, tops=tops)
    figures: dict[str, Any] = {
        "represented": totals.represented / totals.teachers if totals.teachers else None,
        "represented_as_asked": totals.represented_as_asked / totals.teachers
        if totals.teachers
        else None,
        "suppressed": totals.suppressed / totals.cells if totals.cells else None,
        "useful": totals.useful / totals.values if totals.values else None,
        "kappa": kappa_ok,
        "kappas": kappa_found,
        "groups": stages,
        "mae": (totals.no_worse, totals.compared),
        "budget": [budget_left(b) for b in run.budgets],
        "totals": totals,
    }
    lines = [
        f"#### {run.corpus.name}",
        "",
        f"Generated with seed {run.corpus.seed}, scale {run.corpus.scale:.3g}"
        + (f", EPP scale {run.corpus.epp_scale:g}" if run.corpus.epp_scale else "")
        + f": {run.sizes}. Reports ran in {run.seconds:.0f} s; {len(run.tables)} tables released.",
        "",
        markdown_table(rows),
        "",
    ]
    lines += [f"- refused: {r}" for r in run.refused]
    lines += [f"- left out by its report: {r}" for r in run.left_out]
    lines += kappas or ["- weighted kappa: no table of this corpus has one"]
    if stages:
        for stage in [*PIPELINE_STAGES, *(s for s in stages if s not in PIPELINE_STAGES)]:
            if stage in stages:
                groups = stages[stage]
                lines.append(
                    f"- diversity, {stage}: race/ethnicity groups published: "
                    f"{', '.join(groups['race_ethnicity']) or 'none'}; gender groups: "
                    f"{', '.join(groups['gender']) or 'none'}"
                )
    for agreement, period, remaining, total in figures["budget"]:
        lines.append(
            f"- budget left after the pass, {agreement} ({period}): {remaining:g} of {total:g} "
            f"({remaining / total:.0%})"
        )
    return "\n".join(lines) + "\n", figures


def _row(t: Table, m: TableMetrics, beside: Mapping[str, str]) -> dict[str, Any]:
    """One table's line of the corpus's table."""
    steps = ", ".join(f"{n} at {step}" for step, n in sorted(m.published_by_step.items()))
    return {
        "agreement": t.agreement.id,
        "report": t.report + (" (exact)" if t.exact else ""),
        "table": _short(t.title, 40),
        "measure": t.kind,
        "epsilon": f"{t.epsilon:.3g}",
        # The noisy count a cell must reach to be published (release/decide.py).
        "threshold": t.release.get("decisions", {}).get("publish_threshold", "-"),
        "cells (released)": f"{m.cells} ({m.released})",
        "suppressed outright": _share(m.suppressed, m.cells),
        "published (by step)": steps or "none",
        "teachers at ≤1 step": _share(m.represented, m.teachers),
        "useful values": _share(m.useful, m.values) + (f" (+{m.coded} coded)" if m.coded else ""),
        "MAE gateway": _number(m.mae),
        "MAE Tumult (same cells)": beside["MAE Tumult (same cells)"],
        "MAE Tumult (as asked)": beside["MAE Tumult (as asked)"],
        "on published cells: gateway / Tumult (cells)": beside["published"],
    }


def _kappa_lines(t: Table, answer: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """A line for each weighted kappa of the table's summary, and whether it meets the
    target (published, with a half-width within it); beside it, its error and the error
    of the kappa of Tumult's joint table (post-processing of Tumult's noisy counts)."""
    entries = kappa_entries(t.summary)
    if not entries:
        return []
    out = []
    truth = _kappa_of(t, {k: float(leaf.teachers) for k, leaf in t.leaves.items()})
    counts = answer.get("counts")
    theirs = _kappa_of(t, {k: max(v, 0.0) for k, v in counts.items()}) if counts else None
    for entry in entries:
        where = ", ".join(f"{k} {v}" for k, v in entry["group"].items()) or "all teachers"
        width = entry["half_width"]
        if entry["published"]:
            shown = f"published, value {entry['value']}" + (
                f", 95% half-width {width:.3f}" if width is not None else ", no interval"
            )
            if truth is not None:
                shown += f", |error| {abs(entry['value'] - truth):.3f}"
        else:
            shown = f"not published ({entry['note']})"
        if theirs is not None and truth is not None:
            shown += f"; Tumult's joint table gives |error| {abs(theirs - truth):.3f}"
        ok = entry["published"] and width is not None and width <= TARGET_KAPPA_HALF_WIDTH
        out.append((f"- weighted kappa ({_short(t.title, 40)}, {where}): {shown}", ok))
    return out


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _beside_tumult(
    t: Table, cells: Sequence[Mapping[str, Any]], answer: Mapping[str, Any], status: str
) -> tuple[dict[str, str], float | None, float | None]:
    """Tumult's columns of a table's row, and both systems' MAE on the released cells."""
    blank = {"MAE Tumult (same cells)": "-", "MAE Tumult (as asked)": "-", "published": "-"}
    if t.tumult is None:
        return {**blank, "MAE Tumult (same cells)": t.tumult_note}, None, None
    check = f" ({t.input_check})" if t.input_check else ""
    if "error" in answer:
        return (
            {**blank, "MAE Tumult (same cells)": f"Tumult: {answer['error'][:80]}{check}"},
            None,
            None,
        )
    if "counts" not in answer:
        return {**blank, "MAE Tumult (same cells)": status + check}, None, None
    both = side_by_side(
        cells,
        answer,
        kind=t.kind,
        dimensions=t.dimensions,
        leaves=t.leaves,
        clamp=t.clamp,
        hierarchy_of=_hierarchy_of(t.agreement),
    )
    as_asked = tumult_errors(answer, kind=t.kind, leaves=t.leaves, clamp=t.clamp)
    published = "-"
    if both.gateway_published:
        published = (
            f"{_number(_mean(both.gateway_published))} / "
            f"{_number(_mean(both.tumult_published))} ({len(both.gateway_published)})"
        )
    columns = {
        "MAE Tumult (same cells)": _number(_mean(both.tumult)) + check,
        "MAE Tumult (as asked)": _number(_mean(as_asked)),
        "published": published,
    }
    return columns, _mean(both.gateway), _mean(both.tumult)


def _kappa_of(table: Table, counts: Mapping[str, float]) -> float | None:
    from gateway.release.reports import weighted_kappa

    cells = [
        {
            "group": dict(zip(table.dimensions, leaf.key, strict=True)),
            "value": counts.get(k, 0.0),
            "suppressed": False,
        }
        for k, leaf in table.leaves.items()
    ]
    entries = weighted_kappa({"cells": cells})
    return entries[0]["value"] if entries and entries[0]["value"] is not None else None


def targets_section(figures: Mapping[str, Mapping[str, Any]]) -> str:
    """The issue's targets, met or missed, with the figures, for each corpus."""
    from bench.run import table as markdown_table

    def verdict(ok: bool | None) -> str:
        return "-" if ok is None else ("met" if ok else "**missed**")

    rows = []
    for name, f in figures.items():
        represented, suppressed, useful = f["represented"], f["suppressed"], f["useful"]
        totals: Totals = f["totals"]
        rows.append(
            {
                "corpus": name,
                "target": f"teachers in cells as asked or one step up ≥ {TARGET_REPRESENTED:.0%}",
                "figure": f"{_share(totals.represented, totals.teachers)}; as asked "
                f"{_share(totals.represented_as_asked, totals.teachers)}",
                "met?": verdict(None if represented is None else represented >= TARGET_REPRESENTED),
            }
        )
        rows.append(
            {
                "corpus": name,
                "target": f"cells suppressed outright ≤ {TARGET_SUPPRESSED:.0%}",
                "figure": _share(totals.suppressed, totals.cells),
                "met?": verdict(None if suppressed is None else suppressed <= TARGET_SUPPRESSED),
            }
        )
        rows.append(
            {
                "corpus": name,
                "target": f"published values useful ≥ {TARGET_USEFUL:.0%}",
                "figure": _share(totals.useful, totals.values)
                if totals.values
                else "no value published",
                "met?": verdict(None if useful is None else useful >= TARGET_USEFUL),
            }
        )
        if name == DEMO.name:
            rows.append(
                {
                    "corpus": name,
                    "target": f"weighted kappa published, half-width ≤ {TARGET_KAPPA_HALF_WIDTH}",
                    "figure": "see the kappa lines above",
                    "met?": verdict(f["kappa"] if f["kappa"] is not None else False),
                }
            )
        stages = f["groups"]
        if stages:
            short = [
                f"{s} {len(stages.get(s, {}).get('race_ethnicity', []))}" for s in PIPELINE_STAGES
            ]
            ok = all(
                len(stages.get(s, {}).get("race_ethnicity", [])) >= TARGET_GROUPS
                for s in PIPELINE_STAGES
            )
            rows.append(
                {
                    "corpus": name,
                    "target": f"diversity: ≥ {TARGET_GROUPS} race/ethnicity groups at every stage",
                    "figure": ", ".join(short),
                    "met?": verdict(ok),
                }
            )
        no_worse, compared = f["mae"]
        rows.append(
            {
                "corpus": name,
                "target": "MAE no worse than Tumult's, every table",
                "figure": f"{no_worse} of {compared} tables no worse"
                if compared
                else "not compared",
                "met?": verdict(None if not compared else no_worse == compared),
            }
        )
        if name == DEMO.name:
            left = [remaining / total for *_, remaining, total in f["budget"] if total]
            rows.append(
                {
                    "corpus": name,
                    "target": f"the pass leaves ≥ {TARGET_BUDGET_LEFT:.0%} of every budget",
                    "figure": f"least left {min(left):.0%}" if left else "-",
                    "met?": verdict(bool(left) and min(left) >= TARGET_BUDGET_LEFT),
                }
            )
    return markdown_table(rows) + "\n"


# --- the budget sweep ---------------------------------------------------------------------

#: The sweep's scales by default: every report's epsilon multiplied by each in turn. The
#: last is a ceiling, not a budget anyone would sign: a table's noise is then a fraction
#: of a teacher, and what is still not published is held back by the minimum cell,
#: complementary suppression and the coarsening rules alone. (No one release may ask
#: for more than epsilon 100, gateway/release/query.py: x64 keeps every table below it,
#: the largest report, 0.6, being 38.4.)
SWEEP_SCALES = (Decimal(1), Decimal(2), Decimal(4), Decimal(8), Decimal(16), Decimal(64))

SWEEP_LEGEND = """\
The same pass of every report for every recipient, on the same generated data, once
for each scale, with every report's epsilon (its default) multiplied by the scale and
passed as its `epsilon` parameter; each scale runs in a fresh gateway on a throwaway copy
of the agreement files whose budgets are raised just enough for the pass to fit
(`per_release_cap` to the largest report's epsilon, `period_budget` and `privacy_budget`
to the reports' sum; the repo's agreements are untouched). Tumult is not run here. *pass
epsilon*: what the pass spent, over every agreement of the corpus, from the ledger.
*largest share of a signed budget*: the pass's spend on one agreement over the budget
that agreement signs today (its school year's `period_budget` where it has one, else its
`privacy_budget`), the largest of the corpus's agreements: above 100%, the agreement
would have to be amended to run the pass once. Teachers, cells and useful values are
totals over the corpus's noisy tables as in the pass above. *kappa half-width*: the
weighted kappa's 95% half-width on the calibration report's joint table. *groups*:
race/ethnicity (gender) groups published at the diversity report's stages, candidates,
completers, hired, retained (the top of the hierarchy is no group). *refused*: reports
refused for a recipient (listed below the table, with the tables a report leaves out
of its run, which spend nothing). One noise draw per scale: a figure
near its target can miss at a larger scale than one where it was met. A scale far
beyond any budget a partnership would sign (x64 by default) is there as a ceiling:
its noise is a fraction of a teacher, so what it still does not publish no budget will.
"""


@dataclass(frozen=True)
class ScaledAgreement:
    """An agreement file's document with its budgets raised for a pass at some scale."""

    document: dict[str, Any]
    #: Report name -> the epsilon to pass it: its default times the scale.
    epsilons: dict[str, Decimal]
    #: The most a pass of every report spends: their epsilons added.
    pass_epsilon: Decimal


def decimal_text(value: Decimal) -> str:
    """A Decimal as plain digits (``16``, never ``1.6E+1``), as the ledger reads it."""
    return format(value.normalize(), "f")


def scale_agreement(
    document: Mapping[str, Any],
    scale: Decimal,
    *,
    privacy_budget: Decimal,
    period_budget: Decimal | None,
    per_release_cap: Decimal,
) -> ScaledAgreement:
    """An agreement file's ``document`` (as YAML reads it) for a pass of every report
    with its epsilon times ``scale``; ``document`` itself is left unchanged.

    A report's epsilon is its own ``epsilon``, else the agreement's per-release cap (its
    default in gateway/release/reports.py). The budgets given are the agreement's in
    force, its profile with its overrides (``Agreement.resolved_disclosure``); each is
    raised, by a disclosure override, only when the pass needs more: ``per_release_cap``
    to the largest report's epsilon (a report's tables share its epsilon, so no table
    spends more), ``period_budget`` (only where the agreement has one) and
    ``privacy_budget`` to the reports' epsilons added (a partnership release is spent
    once, whoever receives it), and a recipient's ``budget_limits`` likewise. Deltas are
    left alone: every release spends ``floor_delta`` whatever its epsilon.
    """
    out = copy.deepcopy(dict(document))
    epsilons = {
        str(report["name"]): Decimal(str(report.get("epsilon") or per_release_cap)) * scale
        for report in out.get("reports") or []
    }
    needed = sum(epsilons.values(), Decimal(0))
    largest = max(epsilons.values(), default=Decimal(0))
    disclosure = out.setdefault("disclosure", {})
    overrides = disclosure.get("overrides") or {}

    def raise_to(name: str, current: Decimal, wanted: Decimal) -> None:
        if wanted > current:
            overrides[name] = {**(overrides.get(name) or {}), "epsilon": decimal_text(wanted)}

    raise_to("per_release_cap", per_release_cap, largest)
    if period_budget is not None:
        raise_to("period_budget", period_budget, needed)
    raise_to("privacy_budget", privacy_budget, needed)
    if overrides:
        disclosure["overrides"] = overrides
    for limit in (out.get("budget_limits") or {}).values():
        if Decimal(str(limit["epsilon"])) < needed:
            limit["epsilon"] = decimal_text(needed)
    return ScaledAgreement(document=out, epsilons=epsilons, pass_epsilon=needed)


def write_scaled_agreements(
    source: Path, target: Path, scale: Decimal
) -> tuple[dict[tuple[str, str], Decimal], dict[str, Decimal]]:
    """The agreements of ``source`` written to ``target`` for a pass at ``scale``
    (:func:`scale_agreement`); returns each report's epsilon by (agreement, report) and
    each agreement's signed budget: its ``period_budget`` epsilon, else its
    ``privacy_budget``'s, as the files in ``source`` have it."""
    from gateway.agreements.loader import load_registry

    registry = load_registry(source, REPO / "policies")
    target.mkdir(parents=True, exist_ok=True)
    epsilons: dict[tuple[str, str], Decimal] = {}
    signed: dict[str, Decimal] = {}
    for agreement in registry.agreements.values():
        disclosure = agreement.resolved_disclosure
        period = disclosure.period_budget
        scaled = scale_agreement(
            yaml.safe_load(agreement.source_path.read_text()),
            scale,
            privacy_budget=disclosure.privacy_budget.epsilon,
            period_budget=period.epsilon if period is not None else None,
            per_release_cap=disclosure.per_release_cap.epsilon,
        )
        text = yaml.safe_dump(scaled.document, sort_keys=False, allow_unicode=True)
        (target / agreement.source_path.name).write_text(text)
        epsilons.update({(agreement.id, name): e for name, e in scaled.epsilons.items()})
        signed[agreement.id] = (period or disclosure.privacy_budget).epsilon
    return epsilons, signed


def targets_met(figures: Mapping[str, Any]) -> dict[str, bool]:
    """Which of the issue's targets a corpus's figures (:func:`corpus_section`) meet; a
    share with nothing to measure (no value published, say) meets nothing."""
    represented, suppressed, useful = (
        figures.get("represented"),
        figures.get("suppressed"),
        figures.get("useful"),
    )
    stages = figures.get("groups") or {}
    return {
        "represented": represented is not None and represented >= TARGET_REPRESENTED,
        "suppressed": suppressed is not None and suppressed <= TARGET_SUPPRESSED,
        "useful": useful is not None and useful >= TARGET_USEFUL,
        "kappa": figures.get("kappa") is True,
        "groups": bool(stages)
        and all(
            len(stages.get(stage, {}).get("race_ethnicity", [])) >= TARGET_GROUPS
            for stage in PIPELINE_STAGES
        ),
    }


TARGET_NAMES = {
    "represented": f"teachers in cells as asked or one step up ≥ {TARGET_REPRESENTED:.0%}",
    "suppressed": f"cells suppressed outright ≤ {TARGET_SUPPRESSED:.0%}",
    "useful": f"published values useful ≥ {TARGET_USEFUL:.0%}",
    "kappa": f"weighted kappa published, half-width ≤ {TARGET_KAPPA_HALF_WIDTH}",
    "groups": f"≥ {TARGET_GROUPS} race/ethnicity groups at every stage of the diversity report",
}


def met_at(verdicts: Sequence[tuple[Decimal, bool]]) -> str:
    """The scales at which a target is met, from (scale, met?) in the sweep's order."""
    met = [scale for scale, ok in verdicts if ok]
    if not met:
        return f"at none (up to x{decimal_text(max(s for s, _ in verdicts))})"
    first = min(met)
    missed_after = [scale for scale, ok in verdicts if not ok and scale > first]
    text = f"from x{decimal_text(first)}"
    if missed_after:
        text += " (missed again at " + ", ".join(f"x{decimal_text(s)}" for s in missed_after) + ")"
    return text


def _kappa_text(entries: Sequence[Mapping[str, Any]]) -> str:
    if not entries:
        return "-"
    shown = []
    for entry in entries:
        if not entry["published"]:
            shown.append("not published")
        elif entry["half_width"] is None:
            shown.append("published, no interval")
        else:
            shown.append(f"{entry['half_width']:.3f}")
    return "; ".join(shown)


def _groups_text(stages: Mapping[str, Mapping[str, Sequence[str]]]) -> str:
    if not stages:
        return "-"
    return ", ".join(
        f"{len(stages.get(s, {}).get('race_ethnicity', []))} "
        f"({len(stages.get(s, {}).get('gender', []))})"
        for s in PIPELINE_STAGES
    )


def sweep_row(
    corpus: str,
    scale: Decimal,
    figures: Mapping[str, Any],
    budgets: Sequence[Mapping[str, Any]],
    signed: Mapping[str, Decimal],
    *,
    seconds: float,
    refused: int = 0,
    tumult: bool = False,
) -> dict[str, Any]:
    """One (corpus, scale) line of the sweep's table."""
    spent = {}
    for report in budgets:
        agreement, _period, remaining, total = budget_left(report)
        spent[agreement] = total - remaining
    largest = max(spent, key=lambda a: spent[a] / float(signed[a]))
    totals: Totals = figures["totals"]
    row: dict[str, Any] = {
        "corpus": corpus,
        "epsilon scale": f"x{decimal_text(scale)}",
        "pass epsilon": f"{sum(spent.values()):.3g}",
        "largest share of a signed budget": f"{spent[largest] / float(signed[largest]):.0%} "
        f"of {decimal_text(signed[largest])} ({largest})",
        "teachers as asked or ≤1 step": _share(totals.represented, totals.teachers),
        "teachers as asked": _share(totals.represented_as_asked, totals.teachers),
        "cells suppressed outright": _share(totals.suppressed, totals.cells),
        "useful values": _share(totals.useful, totals.values) if totals.values else "none",
        "kappa half-width": _kappa_text(figures.get("kappas") or []),
        "race/ethnicity (gender) groups: candidates, completers, hired, retained": _groups_text(
            figures.get("groups") or {}
        ),
    }
    if tumult:
        no_worse, compared = figures["mae"]
        row["MAE no worse than Tumult"] = f"{no_worse} of {compared}" if compared else "-"
    row["refused"] = refused
    row["seconds"] = f"{seconds:.0f}"
    return row


def sweep(
    scales: Sequence[Decimal] = SWEEP_SCALES,
    *,
    with_tumult: bool = False,
    corpora: Sequence[Corpus] = (DEMO, SMALL),
) -> str:
    """The budget sweep's markdown: a row per (corpus, scale), then the scale from which
    each target is met."""
    from bench.run import table as markdown_table

    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    verdicts: dict[tuple[str, str], list[tuple[Decimal, bool]]] = {}
    statuses = []
    refusals: list[str] = []
    for corpus in corpora:
        for scale in scales:
            print(f"  sweep: {corpus.name} at epsilon x{decimal_text(scale)} ...", flush=True)
            began = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="utility-sweep-") as name:
                folder = Path(name)
                epsilons, signed = write_scaled_agreements(
                    corpus.agreements_dir, folder / "agreements", scale
                )
                corpus_run = run_corpus(
                    corpus,
                    folder / "gateway",
                    agreements_dir=folder / "agreements",
                    epsilons=epsilons,
                    tumult_inputs=with_tumult,
                )
                tumult: dict[str, Any] = {}
                status = "Tumult not run"
                if with_tumult:
                    tumult, status = run_tumult(corpus_run.tables, folder)
                    statuses.append(f"{corpus.name} x{decimal_text(scale)}: {status}")
            _text, figures = corpus_section(corpus_run, tumult, status)
            rows.append(
                sweep_row(
                    corpus.name,
                    scale,
                    figures,
                    corpus_run.budgets,
                    signed,
                    seconds=time.perf_counter() - began,
                    refused=len(corpus_run.refused),
                    tumult=with_tumult,
                )
            )
            refusals += [f"- {corpus.name} x{decimal_text(scale)}: {r}" for r in corpus_run.refused]
            refusals += [
                f"- {corpus.name}, left out by its report at every scale: {r}"
                for r in corpus_run.left_out
                if scale == scales[0]
            ]
            for target, ok in targets_met(figures).items():
                verdicts.setdefault((corpus.name, target), []).append((scale, ok))
            del corpus_run
    met_rows = [
        {"corpus": corpus, "target": TARGET_NAMES[target], "met": met_at(found)}
        for (corpus, target), found in verdicts.items()
    ]
    head = (
        f"Epsilon scales {', '.join('x' + decimal_text(s) for s in scales)}; "
        f"{'Tumult beside each: ' + '; '.join(statuses) if with_tumult else 'Tumult not run'}. "
        f"Total {time.perf_counter() - start:.0f} s.\n\n{SWEEP_LEGEND}"
    )
    return "\n".join(
        [
            head,
            markdown_table(rows),
            "",
            *refusals,
            *([""] if refusals else []),
            "At which scales each target is met (one noise draw per scale):",
            "",
            markdown_table(met_rows),
            "",
        ]
    )


def parse_scales(text: str) -> list[Decimal]:
    """``1,2,4`` -> the scales, each a positive number, in the order given."""
    scales = []
    for part in text.split(","):
        if not part.strip():
            continue
        scale = Decimal(part.strip())
        if not scale.is_finite() or scale <= 0:
            raise argparse.ArgumentTypeError(f"an epsilon scale must be above 0, got {part!r}")
        scales.append(scale)
    return scales


def run(
    *,
    with_tumult: bool = True,
    tumult_flat_map: bool = False,
    epsilon_scales: Sequence[Decimal] | None = SWEEP_SCALES,
    sweep_tumult: bool = False,
) -> str:
    """Both corpora, Tumult beside them, then the budget sweep at ``epsilon_scales``
    (none: no sweep); the markdown section bench/run.py records."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="utility-bench-") as name:
        folder = Path(name)
        runs = []
        for corpus in (DEMO, SMALL):
            print(f"  {corpus.name}: generating, uploading, running every report ...", flush=True)
            runs.append(run_corpus(corpus, folder / corpus.name.replace(" ", "-")))
        tables = [t for r in runs for t in r.tables]
        if with_tumult:
            print("  Tumult Analytics: the same tables ...", flush=True)
            tumult, status = run_tumult(tables, folder, flat_map=tumult_flat_map)
        else:
            tumult, status = {}, "not run (--without-tumult)"
    sections, figures = [], {}
    for corpus_run in runs:
        text, numbers = corpus_section(corpus_run, tumult, status)
        sections.append(text)
        figures[corpus_run.corpus.name] = numbers
    head = (
        "Every report for every recipient, each partnership release counted once. "
        f"{status}. Total {time.perf_counter() - start:.0f} s.\n\n{LEGEND}\n"
    )
    parts = [head, *sections, "#### targets\n", targets_section(figures)]
    if epsilon_scales:
        parts += ["#### budget sweep\n", sweep(epsilon_scales, with_tumult=sweep_tumult)]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--without-tumult", action="store_true", help="skip the Tumult side")
    parser.add_argument(
        "--tumult-flat-map",
        action="store_true",
        help="let Tumult reduce each teacher's rows itself (flat_map_by_id; twice as slow)",
    )
    parser.add_argument(
        "--epsilon-scales",
        type=parse_scales,
        default=list(SWEEP_SCALES),
        metavar="LIST",
        help="the budget sweep's scales, every report's epsilon multiplied by each "
        "(default 1,2,4,8,16,64; an empty list: no sweep)",
    )
    parser.add_argument(
        "--sweep-only", action="store_true", help="only the budget sweep, not the pass above it"
    )
    parser.add_argument(
        "--sweep-tumult",
        action="store_true",
        help="run Tumult beside every scale of the sweep too (about two minutes a scale)",
    )
    options = parser.parse_args(argv)
    if options.sweep_only:
        if not options.epsilon_scales:
            parser.error("--sweep-only needs at least one scale in --epsilon-scales")
        print(sweep(options.epsilon_scales, with_tumult=options.sweep_tumult))
        return
    print(
        run(
            with_tumult=not options.without_tumult,
            tumult_flat_map=options.tumult_flat_map,
            epsilon_scales=options.epsilon_scales,
            sweep_tumult=options.sweep_tumult,
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
