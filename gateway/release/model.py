"""What a release hands back: typed :class:`Release`, :class:`Cell` and :class:`Preview`.

One serialisation (``to_json``) serves the CLI, the API (its response models), the
web pages and the stored copy of a release, so a repeat reads back exactly what the
first answer said.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
)


class AgreementRef(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    version: str


class Cell(BaseModel):
    """One cell of a released table."""

    model_config = ConfigDict(frozen=True)

    group: dict[str, Any]
    value: float | None
    ci95: list[float] | None
    suppressed: bool
    #: Why a cell is hidden: "primary" (its noisy count is below the publish
    #: threshold, or the hard floor) or "complementary" (hidden to protect another).
    reason: Literal["primary", "complementary"] | None = None
    #: A distribution's share of its group (None where the group has a hidden cell).
    share: float | None = None
    #: "<5%" or ">95%": a noisy share near 0% or 100%, shown only as its band.
    coded: str | None = None
    #: The 95% interval of ``share``, from the noise (where a share is given).
    share_ci95: list[float] | None = None
    #: Why a published value should not be used as it is: a rate or share whose 95%
    #: interval spans more than half of 0 to 1, and what would narrow it.
    note: str | None = None
    #: In a coarsened table: the level each coarsening dimension's value stands at
    #: ("as asked", "rating band", "3-year window", or its hierarchy's top) ...
    level: dict[str, str] | None = None
    #: ... and how many coarsening steps above the table as asked (0: as asked).
    steps: int | None = None
    #: A remainder (the rest of a group beside its members published on their own):
    #: the dimension and the labels of the members it stands for.
    covers: dict[str, list[Any]] | None = None
    #: In a coarsened table, a count's or sum's noise standard deviation (0 when exact),
    #: so figures derived from published cells can carry their uncertainty.
    noise_sd: float | None = None

    @model_serializer(mode="wrap")
    def _serialise(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        # Only what a cell has: a reason when hidden, a label when coded, and a share
        # in a distribution (given, None or not, only where the table has shares).
        out: dict[str, Any] = handler(self)
        for name in (
            "reason",
            "coded",
            "share_ci95",
            "note",
            "level",
            "steps",
            "covers",
            "noise_sd",
        ):
            if out.get(name) is None:
                out.pop(name, None)
        if "share" not in self.model_fields_set:
            out.pop("share", None)
        return out


class Release(BaseModel):
    """A released table, as every recipient of the agreement sees it."""

    model_config = ConfigDict(frozen=True)

    release_id: str
    agreement: AgreementRef
    #: The recipient whose request drew the noise; the others receive the same table.
    party: str
    #: Every recipient allowed all of the table's fields: each may ask for it, free.
    recipients: list[str] = Field(default_factory=list)
    query: dict[str, Any]
    cells: list[Cell]
    epsilon_spent: float
    delta_spent: float
    budget_remaining: float
    noise: dict[str, Any]
    minimum_cell: dict[str, int]
    #: How publication was decided: the threshold on the noisy count and the delta of
    #: the hard floor (docs/releases.md).
    decisions: dict[str, Any] = Field(default_factory=dict)
    unprotectable: list[dict[str, Any]] = Field(default_factory=list)
    #: Statistics derived from every noisy cell of the table (a joint table's weighted
    #: kappa and exact agreement per group), each with its 95% interval and a note.
    statistics: list[dict[str, Any]] = Field(default_factory=list)
    created_at: str
    audit_event: str | None = None
    repeated: bool = False

    @model_serializer(mode="wrap")
    def _serialise(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        for name in ("repeated", "statistics"):
            if not out.get(name):
                out.pop(name, None)
        return out

    def to_json(self) -> dict[str, Any]:
        """The one serialisation: the API's response, the stored copy, the CLI's JSON."""
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Release:
        return cls.model_validate(body)


class Preview(BaseModel):
    """What a release would cost and how accurate it would be; spends nothing."""

    model_config = ConfigDict(frozen=True)

    preview: Literal[True] = True
    agreement: AgreementRef
    epsilon: float
    delta: float
    repeat: bool
    epsilon_cost: float
    delta_cost: float
    groups_per_teacher: int
    accuracy_95: dict[str, Any]
    cells: int | None
    budget_remaining: float
    delta_remaining: float
    would_fit: bool
    #: With a period budget: the school year charged ("2026-27") and what the agreement
    #: may still spend over its life; None otherwise.
    budget_period: str | None = None
    lifetime_remaining: float | None = None
    #: The cost as exact decimals (the ledger's own spelling).
    exact: dict[str, str] = Field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
