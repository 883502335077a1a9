"""Named reports: the questions a partnership asks, declared in its agreement, answered
through the release engine so every guarantee of an ad-hoc release applies.

A report in an agreement file names its parameters and its tables; each table is a
query (SPEC section 7) whose values may be parameters, written ``"$name"``:

.. code-block:: yaml

    reports:
      - name: impact
        description: Mean growth score of completers' students, by program
        recipients: [bayview-state]          # optional: default every recipient
        parameters:
          years: {type: int_list, default: [2024, 2025], description: School years}
        tables:
          - title: Mean student growth percentile, by program
            query:
              datasets: [completers, value_added]
              measure: {kind: mean, field: growth_score}
              group_by: [program_code]
              filters: [{field: school_year, op: in, value: $years}]

Every report takes ``epsilon`` too (default: the agreement's per-release cap), the
total it may spend; it is split evenly over its tables, each of which is one
partnership release (its own budget reservation, noise, decisions and audit event).
Before anything is spent, every table is previewed and the whole report must fit the
recipient's remaining budget, in the ledger's exact arithmetic (budget.py); so a
report is refused whole, not half-spent, when it does not fit. A table any recipient
already received on the same data comes back stored, free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway import audit
from gateway.agreements.loader import Registry
from gateway.agreements.models import Agreement, ReportSpec
from gateway.context import Gateway
from gateway.errors import GatewayError, NotFound, PolicyViolation, SchemaError
from gateway.release import budget, derived, noise
from gateway.release.budget import BudgetExhausted
from gateway.release.engine import request_release
from gateway.release.model import Preview, Release
from gateway.release.plan import Composed, conversion_delta, zcdp_charge
from gateway.release.query import Query, WindowTooShort, parse_query, resolve
from gateway.release.rows import NotUploaded

ParameterType = Literal["int", "int_list", "str", "str_list"]


class ReportParameter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ParameterType = "str"
    description: str
    default: Any = None
    choices: list[str | int] | None = None


class ReportTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str
    query: dict[str, Any]
    #: A statistic of the table shown beside it: a joint table's weighted kappa (and
    #: exact agreement), which the release derives from all its noisy cells.
    summary: Literal["weighted_kappa"] | None = None
    #: Cells too small to publish roll up along the agreement's hierarchies (pooled
    #: years, rating bands, program areas, declared groupings) instead of being
    #: suppressed: the default for a report.
    coarsen: bool = True
    #: This table's weight when the report's epsilon is shared out (default: the
    #: error-minimising share, see :func:`allocate`).
    weight: Annotated[float, Field(gt=0, le=100)] | None = None


class DerivedSpec(BaseModel):
    """A figure computed from two tables' released cells: the gap between them (the
    first minus the second) or the conversion from the first to the second, for each
    group both tables publish with the same labels (derived.py gives the interval)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str
    kind: Literal["gap", "conversion"]
    #: The two tables, by position in ``tables`` (0 is the first).
    tables: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2, max_length=2)]
    #: Cells of the first table kept (the others left out), e.g. a stage.
    where: dict[str, str | int] = Field(default_factory=dict)


class ReportDefinition(BaseModel):
    """A report as declared: checked when it is listed or run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    recipients: list[str] | None = None
    #: The default total epsilon (else the agreement's per-release cap).
    epsilon: str | None = None
    parameters: dict[str, ReportParameter] = Field(default_factory=dict)
    tables: list[ReportTable] = Field(min_length=1, max_length=8)
    derived: list[DerivedSpec] = Field(default_factory=list, max_length=8)
    #: How the report's tables are accounted: Laplace noise with epsilons that add up,
    #: Gaussian noise with rho composed over the report (zCDP), or whichever of the two
    #: previews the smaller thresholds and intervals (see :func:`zcdp_alternative`).
    accounting: Literal["auto", "laplace", "zcdp"] = "auto"


def definition(spec: ReportSpec) -> ReportDefinition:
    """The typed definition of a report of the agreement's catalogue."""
    data = spec.model_dump(by_alias=True)
    try:
        report = ReportDefinition.model_validate(data)
    except ValidationError as error:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in error.errors(include_input=False)
        )
        raise SchemaError(f"report {spec.name!r} is not well formed: {reasons}") from None
    for item in report.derived:
        if max(item.tables) >= len(report.tables):
            raise SchemaError(
                f"report {spec.name!r}: derived figure {item.title!r} names table "
                f"{max(item.tables)}, but the report has {len(report.tables)} (counted from 0)"
            )
    for table in report.tables:
        kind = (table.query.get("measure") or {}).get("kind")
        if table.summary == "weighted_kappa" and kind != "joint":
            raise SchemaError(
                f"report {spec.name!r}: table {table.title!r} asks for a weighted kappa, "
                "which needs a joint measure"
            )
    return report


def _report(agreement: Agreement, name: str) -> ReportDefinition:
    for spec in agreement.reports:
        if spec.name == name:
            return definition(spec)
    known = ", ".join(r.name for r in agreement.reports) or "none"
    raise NotFound(f"agreement {agreement.id!r} has no report {name!r} (reports: {known})")


def recipients(agreement: Agreement, report: ReportDefinition) -> list[str]:
    return report.recipients if report.recipients is not None else sorted(agreement.releases)


def list_reports(agreement: Agreement, *, party: str | None = None) -> list[dict[str, Any]]:
    """The agreement's reports (those ``party`` may run, when given), with parameters."""
    listed = []
    for spec in agreement.reports:
        report = definition(spec)
        parties = recipients(agreement, report)
        if party is not None and party not in parties:
            continue
        parameters = {
            name: {
                "type": p.type,
                "description": p.description,
                "default": p.default,
                "choices": p.choices,
            }
            for name, p in report.parameters.items()
        }
        parameters["epsilon"] = {
            "type": "decimal",
            "description": "Total epsilon the report may spend, split over its tables",
            "default": report.epsilon or str(agreement.resolved_disclosure.per_release_cap.epsilon),
            "choices": None,
        }
        listed.append(
            {
                "name": report.name,
                "description": report.description,
                "recipients": parties,
                "tables": [t.title for t in report.tables],
                "parameters": parameters,
            }
        )
    return listed


# --- parameters -----------------------------------------------------------------------


def _parse_value(name: str, spec: ReportParameter, raw: Any) -> Any:
    """A parameter's value from text (CLI, web form) or JSON (API), typed and checked."""
    if spec.type in ("int_list", "str_list"):
        items = raw if isinstance(raw, list) else [p.strip() for p in str(raw).split(",")]
        items = [i for i in items if i != ""]
        if not items:
            raise SchemaError(f"parameter {name!r}: give at least one value")
        values = [_scalar(name, spec.type.removesuffix("_list"), i) for i in items]
    else:
        values = [_scalar(name, spec.type, raw)]
    if spec.choices is not None:
        allowed = {str(c) for c in spec.choices}
        wrong = [v for v in values if str(v) not in allowed]
        if wrong:
            raise SchemaError(
                f"parameter {name!r}: {len(wrong)} value(s) not among the choices "
                f"({', '.join(sorted(allowed))})"
            )
    return values if spec.type.endswith("_list") else values[0]


def _scalar(name: str, kind: str, raw: Any) -> int | str:
    if kind == "int":
        if isinstance(raw, bool):
            raise SchemaError(f"parameter {name!r}: expected a whole number")
        try:
            return int(str(raw).strip())
        except ValueError:
            raise SchemaError(f"parameter {name!r}: expected a whole number") from None
    text = str(raw).strip()
    if not text or len(text) > 64:
        raise SchemaError(f"parameter {name!r}: expected a short text value")
    return text


def resolve_parameters(
    agreement: Agreement, report: ReportDefinition, given: Mapping[str, Any]
) -> tuple[dict[str, Any], Decimal]:
    """Every parameter typed (defaults filled in) and the report's total epsilon."""
    unknown = sorted(set(given) - set(report.parameters) - {"epsilon"})
    if unknown:
        known = ", ".join([*report.parameters, "epsilon"])
        raise SchemaError(
            f"report {report.name!r} takes no parameter {', '.join(map(repr, unknown))} "
            f"(parameters: {known})"
        )
    values: dict[str, Any] = {}
    for name, spec in report.parameters.items():
        raw = given.get(name, spec.default)
        if raw is None:
            raise SchemaError(f"report {report.name!r} needs the parameter {name!r}")
        values[name] = _parse_value(name, spec, raw)
    default = report.epsilon or agreement.resolved_disclosure.per_release_cap.epsilon
    raw_epsilon = given.get("epsilon", default)
    try:
        epsilon = Decimal(str(raw_epsilon))
    except InvalidOperation:
        raise SchemaError("parameter 'epsilon': expected a number such as 0.5") from None
    if not epsilon.is_finite() or epsilon <= 0:
        raise SchemaError("parameter 'epsilon': must be greater than 0")
    return values, epsilon


def _substitute(value: Any, parameters: Mapping[str, Any]) -> Any:
    if isinstance(value, str) and value.startswith("$"):
        name = value[1:]
        if name not in parameters:
            raise SchemaError(f"the report refers to an undeclared parameter {value!r}")
        return parameters[name]
    if isinstance(value, list):
        return [_substitute(v, parameters) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, parameters) for k, v in value.items()}
    return value


def table_queries(
    report: ReportDefinition,
    parameters: Mapping[str, Any],
    epsilon: Decimal,
    shares: Sequence[Decimal] | None = None,
) -> list[Query]:
    """Each table's query with the parameters filled in and its share of epsilon
    (``shares``, else an even split)."""
    if shares is None:
        shares = [budget.split(epsilon, len(report.tables))] * len(report.tables)
    if any(share <= 0 for share in shares):
        raise SchemaError("parameter 'epsilon' is too small to share over the report's tables")
    queries = []
    for table, share in zip(report.tables, shares, strict=True):
        body = _substitute(table.query, parameters)
        body["epsilon"] = str(share)
        if table.coarsen:
            body.setdefault("coarsen", True)
        queries.append(parse_query(body))
    return queries


def allocate(
    report: ReportDefinition,
    previews: Sequence[Preview | None],
    epsilon: Decimal,
    bounds: tuple[Decimal, Decimal] | None = None,
) -> list[Decimal]:
    """The report's epsilon shared over its tables to minimise its expected error.

    A table released exactly (posted positions) costs nothing and gets nothing. For
    the rest, the expected squared error summed over a table's ``n`` cells is
    proportional to ``n (g / epsilon_t)^2`` (``g``: cells a teacher may be in), so
    the total is smallest, for a fixed sum of the ``epsilon_t``, when each is
    proportional to ``(n g^2)^(1/3)`` (a Lagrange multiplier). A table's declared
    ``weight`` replaces that. A table left out of the run (``None``: a retention whose
    window is too short) gets nothing. With ``bounds`` (the profile's per-release minimum
    and cap), no share passes them: the rest is shared again among the other tables.
    Shares are rounded down to the ledger's unit, so they never add up to more than
    ``epsilon``.
    """
    weights: list[Decimal] = []
    for table, preview in zip(report.tables, previews, strict=True):
        if preview is None or preview.accuracy_95.get("exact"):
            weights.append(Decimal(0))
        elif table.weight is not None:
            weights.append(Decimal(str(table.weight)))
        else:
            n = max(preview.cells or 1, 1)
            g = preview.groups_per_teacher
            weights.append(Decimal(repr((n * g * g) ** (1.0 / 3.0))))
    even = budget.split(epsilon, len(weights))
    if sum(weights, Decimal(0)) <= 0:
        return [even] * len(weights)
    shares = _fill(weights, epsilon, *(bounds or (Decimal(0), epsilon)))
    # An exact (or left out) table's query keeps a nominal epsilon: it spends nothing.
    return [budget.split(share, 1) if w else even for w, share in zip(weights, shares, strict=True)]


def _fill(weights: Sequence[Decimal], total: Decimal, low: Decimal, high: Decimal) -> list[Decimal]:
    """``total`` shared in proportion to ``weights`` (those above 0), each share kept
    within [low, high] (the per-release minimum and cap): a share that would pass a
    bound is fixed at it and the rest shared again among the others."""
    fixed: dict[int, Decimal] = {}
    live = [i for i, w in enumerate(weights) if w > 0]
    while True:
        free = [i for i in live if i not in fixed]
        if not free:
            break
        left = total - sum(fixed.values(), Decimal(0))
        weight = sum((weights[i] for i in free), Decimal(0))
        share = {i: left * weights[i] / weight for i in free}
        over = [i for i in free if share[i] > high]
        under = [i for i in free if share[i] < low] if not over else []
        for i in over:
            fixed[i] = high
        for i in under:
            fixed[i] = low
        if not over and not under:
            fixed.update(share)
            break
    return [fixed.get(i, Decimal(0)) for i in range(len(weights))]


def check_reports(agreement: Agreement, registry: Registry) -> list[str]:
    """Problems of the agreement's report definitions, each ``report NAME: reason``:
    every table, with the default parameters, must be a query each recipient may ask."""
    problems: list[str] = []
    for spec in agreement.reports:
        try:
            report = definition(spec)
            values, epsilon = resolve_parameters(agreement, report, {})
            queries = table_queries(report, values, epsilon)
            for party in recipients(agreement, report):
                for table, query in zip(report.tables, queries, strict=True):
                    try:
                        resolve(query, agreement=agreement, registry=registry, party=party)
                    except WindowTooShort:
                        pass  # a longer window of years runs it (run_report says so)
                    except GatewayError as error:
                        problems.append(
                            f"report {spec.name}: table {table.title!r} for {party}: "
                            f"{error.message}"
                        )
        except GatewayError as error:
            problems.append(f"report {spec.name}: {error.message}")
    return problems


# --- running ----------------------------------------------------------------------------


def run_report(
    gateway: Gateway,
    *,
    agreement_id: str,
    party: str,
    report: str,
    parameters: Mapping[str, Any],
    actor: audit.Actor,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Run (or preview) a named report for ``party``; see the module docstring."""
    agreement = gateway.agreement(agreement_id)
    definition_ = _report(agreement, report)
    if party not in recipients(agreement, definition_):
        raise PolicyViolation(
            f"report {report!r} of agreement {agreement_id!r} is not for {party!r} "
            f"(recipients: {', '.join(recipients(agreement, definition_))})"
        )
    values, epsilon = resolve_parameters(agreement, definition_, parameters)

    skipped: dict[int, str] = {}
    refusals: list[GatewayError] = []

    def preview_all(queries: list[Query]) -> list[Preview | None]:
        previews: list[Preview | None] = []
        for number, query in enumerate(queries):
            if number in skipped:
                previews.append(None)
                continue
            try:
                preview = request_release(
                    gateway,
                    agreement_id=agreement_id,
                    party=party,
                    query=query,
                    actor=actor,
                    dry_run=True,
                )
            except (WindowTooShort, NotUploaded) as error:  # nothing to count, nothing spent
                skipped[number] = error.message
                refusals.append(error)
                previews.append(None)
                continue
            assert isinstance(preview, Preview)
            previews.append(preview)
        return previews

    # Shape first (cells, teachers' groups, exact or not: none depends on epsilon),
    # then the error-minimising shares, previewed again for their cost.
    profile = agreement.resolved_disclosure
    shares = allocate(
        definition_,
        preview_all(table_queries(definition_, values, epsilon)),
        epsilon,
        (profile.per_release_minimum.epsilon, profile.per_release_cap.epsilon),
    )
    if len(skipped) == len(definition_.tables):
        raise type(refusals[0])(
            f"report {report!r} has no table to run with these parameters: "
            + "; ".join(skipped.values())
        )
    queries = table_queries(definition_, values, epsilon, shares)
    previews = preview_all(queries)
    chain = zcdp_alternative(gateway, agreement, definition_, queries, previews, party, actor)
    if chain is not None:
        queries, previews = chain.queries, chain.previews
    # A table asked before on the same data comes back stored, at no cost.
    costs = [p for p in previews if p is not None]
    total = sum((Decimal(p.exact["epsilon_cost"]) for p in costs), Decimal(0))
    total_delta = sum((Decimal(p.exact["delta_cost"]) for p in costs), Decimal(0))
    with gateway.sessions() as session:
        state = budget.budget_state(session, agreement.id, party, now=gateway.clock())
    would_fit = state is not None and state.fits(total, total_delta)
    remaining = float(state.epsilon_remaining) if state else 0.0
    head = {
        "report": definition_.name,
        "description": definition_.description,
        "agreement": {"id": agreement.id, "version": agreement.version},
        "parameters": {**values, "epsilon": str(epsilon)},
    }
    if dry_run:
        return {
            **head,
            "preview": True,
            "tables": [
                {"title": t.title, "preview": p.to_json()}
                if p is not None
                else {"title": t.title, "skipped": skipped[n]}
                for n, (t, p) in enumerate(zip(definition_.tables, previews, strict=True))
            ],
            "epsilon": float(total),
            "accounting": _accounting(chain),
            "budget_remaining": remaining,
            "would_fit": would_fit,
        }
    if not would_fit:
        raise BudgetExhausted(
            f"report {report!r} would spend epsilon {total} and delta {total_delta} but "
            f"{party!r} may spend epsilon {remaining} more; nothing was spent",
        )
    tables: list[dict[str, Any]] = []
    for number, (table, query) in enumerate(zip(definition_.tables, queries, strict=True)):
        if number in skipped:  # nothing spent: say why, in its place
            tables.append({"title": table.title, "skipped": skipped[number]})
            continue
        try:
            released = request_release(
                gateway,
                agreement_id=agreement_id,
                party=party,
                query=query,
                actor=actor,
                report=definition_.name,
                composed=chain.composed.get(number) if chain is not None else None,
            )
            assert isinstance(released, Release)
            if chain is not None and released.repeated and number in chain.fresh:
                # Drawn meanwhile by another request: the later tables' charges assumed
                # its rho in the composition, so they would be too small. Stop here.
                later = [n for n in chain.fresh if n > number]
                if later:
                    raise ReportInterrupted(
                        f"table {table.title!r} was released meanwhile by another request "
                        "and came back stored; the report stopped so that its zCDP "
                        "charges stay exact. Run it again: what was released comes back "
                        "free"
                    )
        except GatewayError as error:
            # Another request may have spent the budget between the check and this
            # table: say which table stopped the report and what was released before it.
            done = ", ".join(t["release"]["release_id"] for t in tables if "release" in t)
            done = done or "none"
            error.message = (
                f"report {report!r} stopped at table {table.title!r}: {error.message} "
                f"(tables released before it: {done})"
            )
            error.args = (error.message,)
            raise
        assert isinstance(released, Release)
        body = released.to_json()
        entry: dict[str, Any] = {"title": table.title, "release": body}
        if table.summary == "weighted_kappa":
            entry["summary"] = {"weighted_kappa": weighted_kappa(body)}
        tables.append(entry)
    return {
        **head,
        "accounting": _accounting(chain),
        "tables": tables,
        "derived": [
            {
                "title": item.title,
                "kind": item.kind,
                "rows": derived_rows(item, tables, agreement),
            }
            for item in definition_.derived
        ],
        "epsilon_spent": float(
            sum(
                (Decimal(str(t["release"]["epsilon_spent"])) for t in tables if "release" in t),
                Decimal(0),
            )
        ),
        "budget_remaining": [t for t in tables if "release" in t][-1]["release"][
            "budget_remaining"
        ],
    }


# --- zCDP accounting ------------------------------------------------------------------


class ReportInterrupted(GatewayError):
    """A zCDP report stopped part-way so that its charges stay exact."""

    code = "report_interrupted"
    status = 409
    exit_code = 9


@dataclass(frozen=True)
class Chain:
    """A report's new tables accounted in zCDP: their queries (rho, and the epsilon each
    adds to the report's converted cost), where each stands in the composition, and the
    figures the choice was made on."""

    queries: list[Query]
    previews: list[Preview | None]
    composed: dict[int, Composed]
    fresh: list[int]  # the tables to be drawn, in order (the others come back stored)
    rho: Decimal
    delta: Decimal
    epsilon: Decimal
    scores: dict[str, float]


def _accounting(chain: Chain | None) -> dict[str, Any]:
    if chain is None:
        return {"kind": "laplace"}
    return {
        "kind": "zcdp",
        "rho": str(chain.rho),
        "conversion_delta": str(chain.delta),
        "epsilon": str(chain.epsilon),
        "scores": chain.scores,
    }


def _largest(value: Any) -> float:
    """A preview's figure, or the top of its span (``[low, high]``)."""
    return float(max(value) if isinstance(value, list) else value or 0)


def _scores(previews: Sequence[Preview | None], new: Sequence[int]) -> list[float]:
    """What the choice of accounting compares, for each new table: the publish
    threshold of a cell (what decides whether it is published) plus the 95% half-width
    of its count (how far off it is), both in teachers; for a table that coarsens,
    summed over the levels it may be published at (merged cells have thresholds and
    intervals of their own)."""
    out = []
    for number in new:
        preview = previews[number]
        assert preview is not None
        accuracy = preview.accuracy_95
        levels = accuracy.get("coarsening") or [
            {
                "publish_threshold": accuracy.get("publish_threshold"),
                "count_half_width": accuracy.get("count_half_width")
                or accuracy.get("sum_half_width"),
            }
        ]
        out.append(
            sum(
                _largest(level.get("publish_threshold")) + _largest(level.get("count_half_width"))
                for level in levels
            )
        )
    return out


def zcdp_alternative(
    gateway: Gateway,
    agreement: Agreement,
    report: ReportDefinition,
    queries: Sequence[Query],
    previews: Sequence[Preview | None],
    party: str,
    actor: audit.Actor,
) -> Chain | None:
    """The report's new tables accounted in zCDP, when the report asks for it or (by
    default) when it previews better than Laplace noise at the same cost; else None.

    The Laplace plan's epsilon for the tables that would be drawn (not stored repeats,
    not exact, not left out) is converted to a rho at the agreement's conversion delta
    (plan.conversion_delta, OpenDP's conversion), and the rho shared over the tables in
    proportion to ``sqrt(n g)`` (which minimises the summed variance ``n g / (2 rho)``)
    or their declared weights. Each table is charged what it adds to the report's
    converted epsilon (plan.zcdp_charge), so the charges add up to the converted epsilon
    of the rho measured, at most the Laplace plan's, plus the conversion's delta once.
    Gaussian noise beats Laplace noise when a report has several tables or a teacher
    is in several cells: its tails are lighter, rho adds up where epsilon would, and
    its sensitivity is in L2. By default it is chosen only when no table previews the
    worse for it (threshold plus half-width) and their sum is lower.
    """
    if report.accounting == "laplace":
        return None
    new = [
        n
        for n, p in enumerate(previews)
        if p is not None and not p.repeat and not p.accuracy_95.get("exact")
    ]
    if not new:
        return None
    if any(previews[n].cells is None for n in new):  # type: ignore[union-attr]
        if report.accounting == "zcdp":
            raise SchemaError(
                f"report {report.name!r}: zCDP accounting needs every table's values public"
            )
        return None
    spend = sum((Decimal(previews[n].exact["epsilon_cost"]) for n in new), Decimal(0))  # type: ignore[union-attr]
    delta = conversion_delta(agreement)
    total_rho = noise.zcdp_rho(spend, delta)
    weights = []
    for n in new:
        preview = previews[n]
        assert preview is not None
        declared = report.tables[n].weight
        weights.append(
            float(declared)
            if declared is not None
            else math.sqrt(max(preview.cells or 1, 1) * preview.groups_per_teacher)
        )
    share = sum(weights)
    rhos = {
        n: (total_rho * Decimal(repr(w / share))).quantize(Decimal("1e-18"), rounding=ROUND_FLOOR)
        for n, w in zip(new, weights, strict=True)
    }
    out_queries, out_previews = list(queries), list(previews)
    composed: dict[int, Composed] = {}
    stored: set[int] = set()  # asked before in this form: back free, in no composition
    try:
        while True:
            before = Decimal(0)
            for n in new:
                if n in stored:
                    continue  # keeps the query (and place) it was stored under
                charge = zcdp_charge(rhos[n], before, delta)
                query = queries[n].model_copy(update={"rho": rhos[n], "epsilon": charge})
                composed[n] = Composed(rho_before=before, report_epsilon=spend)
                seen = request_release(
                    gateway,
                    agreement_id=agreement.id,
                    party=party,
                    query=query,
                    actor=actor,
                    dry_run=True,
                    composed=composed[n],
                )
                assert isinstance(seen, Preview)
                out_queries[n], out_previews[n] = query, seen
                before += rhos[n]
            found = {n for n in new if n not in stored and out_previews[n].repeat}  # type: ignore[union-attr]
            if not found:
                break
            stored |= found  # the rest compose without them: charges again
    except (GatewayError, noise.CalibrationFailed) as error:
        if report.accounting == "zcdp":
            raise SchemaError(
                f"report {report.name!r} cannot be accounted in zCDP at epsilon {spend}: {error}"
            ) from None
        return None
    laplace, gaussian = _scores(previews, new), _scores(out_previews, new)
    scores = {"laplace": sum(laplace), "zcdp": sum(gaussian)}
    # Automatically only when no table is the worse for it: a report's tables are
    # different questions, and one's gain does not pay for another's loss.
    better = all(z <= lap for z, lap in zip(gaussian, laplace, strict=True))
    if report.accounting == "auto" and not (better and scores["zcdp"] < scores["laplace"]):
        return None
    fresh = [n for n in new if n not in stored]
    return Chain(
        queries=out_queries,
        previews=out_previews,
        composed=composed,
        fresh=fresh,
        rho=sum((rhos[n] for n in fresh), Decimal(0)),
        delta=delta,
        epsilon=sum((Decimal(out_previews[n].exact["epsilon_cost"]) for n in fresh), Decimal(0)),  # type: ignore[union-attr]
        scores={name: round(value, 1) for name, value in scores.items()},
    )


def weighted_kappa(release: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The weighted kappa of each group of a joint table, as the release derived it from
    all its noisy cells (postprocess.statistics), with its 95% interval and a note."""
    out = []
    for entry in release.get("statistics") or []:
        kappa = entry.get("weighted_kappa") or {}
        out.append(
            {
                "group": entry["group"],
                "value": kappa.get("value"),
                "ci95": kappa.get("ci95"),
                "usable": kappa.get("usable", False),
                "note": kappa.get("note") or entry.get("note") or "from every noisy cell",
            }
        )
    return out


# --- figures from two tables --------------------------------------------------------------


def _noisy_cell(cell: Mapping[str, Any]) -> derived.Noisy | None:
    """A published cell as a noisy measurement: its value and, from its 95% interval's
    half-width, its noise variance (exact cells: 0). None for a hidden or coded cell."""
    if cell.get("suppressed") or cell.get("value") is None or not cell.get("ci95"):
        return None
    value = float(cell["value"])
    if cell.get("noise_sd") is not None:  # a coarsened table's cell says it
        return derived.Noisy(value, float(cell["noise_sd"]) ** 2)
    low, high = cell["ci95"]
    half = max(high - value, value - low, 0.0)
    # One Laplace draw's 95% half-width is ln(20) scales; its variance 2 scale^2.
    return derived.Noisy(value, 2.0 * (half / math.log(20.0)) ** 2)


def _asked(
    agreement: Agreement | None, release: Mapping[str, Any], dimension: str
) -> frozenset[Any] | None:
    """The values a table asked for on ``dimension``: its ``in`` (or whole-year
    ``between``) filter on it, else every code its hierarchy places; None when unknown."""
    for item in (release.get("query") or {}).get("filters") or []:
        if item["field"].rpartition(".")[2] != dimension.rpartition(".")[2]:
            continue
        if item["op"] == "in":
            return frozenset(item["value"])
        if item["op"] == "eq":
            return frozenset([item["value"]])
        if item["op"] == "between" and all(isinstance(v, int) for v in item["value"]):
            return frozenset(range(item["value"][0], item["value"][1] + 1))
    hierarchy = agreement.field_hierarchy(dimension) if agreement is not None else None
    return frozenset(hierarchy.codes) if hierarchy is not None and hierarchy.codes else None


def _codes(
    agreement: Agreement | None,
    dimension: str,
    cell: Mapping[str, Any],
    asked: frozenset[Any] | None,
) -> frozenset[Any] | None:
    """The values as asked that ``cell`` stands for on ``dimension`` (its own value, a
    group's codes, a window's years, a remainder's members), kept to the values its
    table ``asked``; None only for a hierarchy's top when those are unknown."""
    label = cell["group"][dimension]
    level = (cell.get("level") or {}).get(dimension, "as asked")
    hierarchy = agreement.field_hierarchy(dimension) if agreement is not None else None
    if level == "as asked" or hierarchy is None:
        return frozenset([label])
    names = list(hierarchy.level_names)
    index = names.index(level) if level in names else -1
    covers = (cell.get("covers") or {}).get(dimension)
    if covers is None and level == hierarchy.top:
        return asked  # every value asked
    # A remainder stands for the groups it covers, one level below its own.
    labels, index = (covers, index - 1) if covers is not None else ([label], index)
    out: set[Any] = set()
    for item in labels:
        if index < 0:
            out.add(item)
        elif hierarchy.levels[index].pool is not None:
            first, _, last = str(item).partition("\u2013")
            out.update(range(int(first), int(last or first) + 1))
        else:
            out.update((hierarchy.levels[index].groups or {}).get(str(item), [item]))
    return frozenset(out & asked) if asked is not None else frozenset(out)


def _labels(cell: Mapping[str, Any], dims: Sequence[str]) -> tuple[Any, ...]:
    return tuple(cell["group"][d] for d in dims)


def _overlap(x: frozenset[Any] | None, y: frozenset[Any] | None) -> bool:
    return x is None or y is None or bool(x & y)


def derived_rows(
    spec: DerivedSpec,
    tables: Sequence[Mapping[str, Any]],
    agreement: Agreement | None = None,
) -> list[dict[str, Any]]:
    """A derived figure (first table against the second) for each block of cells that
    stand for the same values of the dimensions the tables share: where one table
    publishes a coarser group than the other, the finer table's cells are summed into
    it; each table is summed over its other dimensions. A block with a hidden cell, or
    whose two sides do not cover the same values, gives no row."""
    if any("release" not in tables[n] for n in spec.tables):
        return []  # a table left out of the run
    first = [
        c
        for c in tables[spec.tables[0]]["release"]["cells"]
        if all(str(c["group"].get(k)) == str(v) for k, v in spec.where.items())
    ]
    second = list(tables[spec.tables[1]]["release"]["cells"])
    if not first or not second:
        return []
    dims = [d for d in first[0]["group"] if d not in spec.where and d in second[0]["group"]]
    cells = [(0, c) for c in first] + [(1, c) for c in second]
    releases = [tables[spec.tables[0]]["release"], tables[spec.tables[1]]["release"]]
    asked = [[_asked(agreement, release, d) for d in dims] for release in releases]
    codes = [
        [_codes(agreement, d, c, asked[side][n]) for n, d in enumerate(dims)] for side, c in cells
    ]
    # Blocks: cells of the two tables joined whenever they overlap on every shared dimension.
    parent = list(range(len(cells)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(first)):
        for j in range(len(first), len(cells)):
            if all(_overlap(x, y) for x, y in zip(codes[i], codes[j], strict=True)):
                parent[root(i)] = root(j)
    blocks: dict[int, list[int]] = {}
    for i in range(len(cells)):
        blocks.setdefault(root(i), []).append(i)
    rows = []
    for members in blocks.values():
        sides = [[i for i in members if cells[i][0] == side] for side in (0, 1)]
        if not sides[0] or not sides[1]:
            continue
        spans = [
            [frozenset().union(*(codes[i][n] or {None} for i in side)) for n in range(len(dims))]
            for side in sides
        ]
        # A hierarchy's top stands for every value asked: it overlaps every cell of the
        # other table, so the block holds them all, whatever their values.
        if any(
            None not in first_span and None not in second_span and first_span != second_span
            for first_span, second_span in zip(spans[0], spans[1], strict=True)
        ):
            continue  # the two sides do not stand for the same teachers' groups
        measured = [[_noisy_cell(cells[i][1]) for i in side] for side in sides]
        if any(m is None for side in measured for m in side):
            continue
        x, y = (derived.total(m for m in side if m is not None) for side in measured)
        if spec.kind == "gap":
            result = derived.gap(minuend=x, subtrahend=y)
        else:
            result = derived.conversion(from_stage=x, to_stage=y)
        # Named for the coarser side: the one with fewer distinct groups on ``dims``.
        side = min(
            sides,
            key=lambda m: (
                len({_labels(cells[i][1], dims) for i in m}),
                -max(cells[i][1].get("steps") or 0 for i in m),
            ),
        )
        names = list(dict.fromkeys(_labels(cells[i][1], dims) for i in side))
        group = {
            d: names[0][n] if len(names) == 1 else " + ".join(str(t[n]) for t in names)
            for n, d in enumerate(dims)
        }
        rows.append({"group": group, **result.to_json()})
    return rows


def parse_param_options(options: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` command-line options as a mapping (a repeated key is an error)."""
    values: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key.strip():
            raise SchemaError(f"--param {option!r}: expected KEY=VALUE")
        if key.strip() in values:
            raise SchemaError(f"--param {key.strip()!r} is given twice")
        values[key.strip()] = value.strip()
    return values
