"""The typed shape of agreements, dataset schemas and disclosure profiles.

These models describe what a YAML file may contain: every field has an exact
type (``strict``: ``"10"`` is not accepted for ``10``), unknown keys are refused
(``extra="forbid"``), and instances are immutable once loaded. Checks that
compare fields with each other or with other files (a dataset's schema exists,
a stored field is a column of it...) live in :mod:`.policy_checks` and
:mod:`.agreement_checks`; :mod:`.loader` runs them all.

Every field named here is documented in ``docs/agreements.md``.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping, Sequence
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from gateway.errors import NotFound, PolicyViolation

ColumnType = Literal["string", "integer", "number", "date", "boolean"]
ColumnRole = Literal[
    "educator_id", "direct_identifier", "quasi_identifier", "measure", "student_measure"
]
PartyKind = Literal["district", "epp"]
OnBadRows = Literal["refuse", "reject_rows"]
FormulaCells = Literal["reject", "neutralise"]
#: What one row of a dataset is about (docs/agreements.md#the-unit-of-a-dataset).
RowUnit = Literal["teacher", "candidate", "student_derived", "position"]
PositionData = Literal["exact", "noisy"]

#: PTAC's absolute floor for a minimum cell size (SPEC section 5).
ABSOLUTE_MIN_CELL = 3

_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
# Dataset and column names are snake_case: a dot separates them in qualified
# release fields ("evaluations.summative_rating"), so neither may contain one.
_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def _check_slug(value: str) -> str:
    if not _SLUG.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a lower-case slug (letters, digits and hyphens, "
            "starting and ending with a letter or digit, at most 64 characters)"
        )
    return value


def _check_identifier(value: str) -> str:
    if not _IDENTIFIER.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a snake_case name (lower-case letters, digits and "
            "underscores, starting with a letter, at most 63 characters)"
        )
    return value


def _check_non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


Slug = Annotated[str, AfterValidator(_check_slug)]
Identifier = Annotated[str, AfterValidator(_check_identifier)]
Text = Annotated[str, AfterValidator(_check_non_blank)]


class _FileModel(BaseModel):
    """Base of everything read from a policy or agreement file."""

    # strict: a config file should say 10, not "10"; forbid: a misspelt key is
    # an error, not a silently ignored setting; frozen: loaded policy never changes.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


# --- dataset schemas -----------------------------------------------------------


class CodeSpec(_FileModel):
    """One allowed value of a coded column, with an optional human label."""

    value: str | bool | int | float
    label: str | None = None


class ValueRange(_FileModel):
    """Inclusive bounds of a numeric column; either bound may be left out."""

    min: int | float | None = None
    max: int | float | None = None


class Normalisation(_FileModel):
    """How a raw educator ID is normalised before it is checked and hashed."""

    trim: bool
    upper: bool
    strip_leading_zeros: bool


# --- hierarchies -------------------------------------------------------------------

#: A code a hierarchy groups: a value of a string, integer or boolean column.
HierarchyCode = str | int | bool
#: A level of a hierarchy, by position (0 is the finest declared level) or by name.
LevelRef = int | str


def code_key(value: Any) -> tuple[bool, Any]:
    """How codes are compared: by value, except that ``True`` and ``1`` differ
    (as in the schemas' code lists)."""
    return (isinstance(value, bool), value)


def _check_pool(value: int) -> int:
    if value < 1:
        raise ValueError(f"pool must be a whole number of years, at least 1, got {value}")
    return value


def window_label(end: int, pool: int) -> str:
    """The label of the ``pool`` years ending at ``end``: 2023, an en dash, 2025."""
    start = end - pool + 1
    return str(end) if start == end else f"{start}\u2013{end}"


class HierarchyLevel(_FileModel):
    """One level of a hierarchy: codes gathered into labelled groups, or pooled years.

    Exactly one of ``groups`` (group label -> the codes it covers) and ``pool``
    (a window of that many consecutive years, one ending at each year) is given.
    """

    name: Text
    groups: dict[Text, list[HierarchyCode]] | None = None
    pool: Annotated[int, AfterValidator(_check_pool)] | None = None

    @model_validator(mode="after")
    def _groups_or_pool(self) -> HierarchyLevel:
        if (self.groups is None) == (self.pool is None):
            raise ValueError(
                "a level has either groups (label: [codes]) or a pool (a window of years), "
                + ("not both" if self.groups is not None else "and this one has neither")
            )
        return self

    def window(self, end: int) -> list[int]:
        """The years of this pool level's window ending at ``end``, oldest first."""
        if self.pool is None:
            raise ValueError(f"level {self.name!r} groups codes; it has no windows of years")
        return list(range(end - self.pool + 1, end + 1))


class Hierarchy(_FileModel):
    """How one dimension coarsens: its declared levels, finest first, then the top.

    Every hierarchy ends in an implicit top level whose one group, labelled
    ``top``, covers every value. Levels are referred to by position (0 is the
    finest declared level, ``len(levels)`` the top) or by name (the top level's
    name is its label). The rules a valid hierarchy follows (every code in
    exactly one group per level, levels nesting) are checked by
    :mod:`.hierarchy_checks`; the methods here assume them.
    """

    levels: list[HierarchyLevel]
    top: Text = "all"

    # code key -> group label, one mapping per level (empty for pools): built once.
    _parents: tuple[dict[tuple[bool, Any], str], ...] = PrivateAttr(default=())

    def model_post_init(self, context: Any, /) -> None:
        """Index each level's groups by code, so :meth:`parent` is one lookup."""
        indexes = []
        for level in self.levels:
            index: dict[tuple[bool, Any], str] = {}
            for label, codes in (level.groups or {}).items():
                for code in codes:
                    index.setdefault(code_key(code), label)
            indexes.append(index)
        self._parents = tuple(indexes)

    @property
    def level_names(self) -> tuple[str, ...]:
        """The names of the levels, finest first, ending with the top level's."""
        return (*(level.name for level in self.levels), self.top)

    @property
    def pooled(self) -> bool:
        """True when the levels pool years (rather than group codes)."""
        return any(level.pool is not None for level in self.levels)

    @property
    def codes(self) -> tuple[HierarchyCode, ...]:
        """The codes the finest level groups, in file order (empty when it pools years)."""
        if not self.levels or self.levels[0].groups is None:
            return ()
        return tuple(code for codes in self.levels[0].groups.values() for code in codes)

    def level_index(self, level: LevelRef) -> int:
        """The position of ``level`` (a position or a name); :class:`NotFound` if none."""
        names = self.level_names
        if isinstance(level, int) and not isinstance(level, bool):
            if 0 <= level < len(names):
                return level
        elif isinstance(level, str) and level in names:
            return names.index(level)
        raise NotFound(f"no level {level!r} in this hierarchy (levels: {', '.join(names)})")

    def parent(self, value: HierarchyCode, level: LevelRef) -> str:
        """The label of the group of ``level`` that covers ``value``.

        For a pool level that is the window ending at ``value`` (see
        :func:`window_label`); at the top level, ``top``. :class:`NotFound` if
        ``value`` is in no group.
        """
        index = self.level_index(level)
        if index == len(self.levels):
            return self.top
        pool = self.levels[index].pool
        if pool is not None:
            # Integral, not int: years read from a table may be numpy integers.
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise NotFound(
                    f"{value!r} is not a year: level {self.levels[index].name!r} pools years"
                )
            return window_label(int(value), pool)
        try:
            return self._parents[index][code_key(value)]
        except KeyError:
            raise NotFound(
                f"{value!r} is in no group of level {self.levels[index].name!r}"
            ) from None

    def parents(self, value: HierarchyCode) -> tuple[str, ...]:
        """The label covering ``value`` at each level, finest first, ending with ``top``."""
        return tuple(self.parent(value, index) for index in range(len(self.level_names)))

    def groups(
        self, level: LevelRef, values: Sequence[HierarchyCode] | None = None
    ) -> dict[str, list[HierarchyCode]]:
        """The groups of ``level``: label -> the codes it covers, in file order.

        With ``values`` (the keys a table asks for), only those values are placed,
        and groups covering none of them are left out; a value in no group is
        :class:`NotFound`. A pool level needs ``values``: one window ends at each,
        listing all its years (windows of consecutive years overlap).
        """
        index = self.level_index(level)
        if values is None and self.pooled:
            raise ValueError("this hierarchy pools years: name the years its windows end at")
        if index == len(self.levels):
            return {self.top: list(values if values is not None else self.codes)}
        declared = self.levels[index]
        if declared.pool is not None and values is not None:
            windows: dict[str, list[HierarchyCode]] = {}
            for year in sorted(values, key=lambda v: (isinstance(v, str), v)):
                label = self.parent(year, index)  # NotFound for a value that is not a year
                windows.setdefault(label, list(declared.window(int(year))))
            return windows
        groups = declared.groups or {}
        if values is None:
            return {label: list(codes) for label, codes in groups.items()}
        placed: dict[str, list[HierarchyCode]] = {label: [] for label in groups}
        for value in values:
            placed[self.parent(value, index)].append(value)
        return {label: codes for label, codes in placed.items() if codes}

    def restricted_to(self, values: Sequence[HierarchyCode]) -> Hierarchy:
        """This hierarchy over ``values`` only (an agreement's own programs): codes
        not among them are left out, and groups left empty dropped. Pools are kept."""
        keep = {code_key(value) for value in values}
        levels = [
            level
            if level.groups is None
            else HierarchyLevel(
                name=level.name,
                groups={
                    label: kept
                    for label, codes in level.groups.items()
                    if (kept := [code for code in codes if code_key(code) in keep])
                },
            )
            for level in self.levels
        ]
        return Hierarchy(levels=levels, top=self.top)


#: Decimals a mean is shown with when its measure declares no ``precision``.
DEFAULT_PRECISION = 1
#: The most decimals a measure may declare: beyond it, the noise is all that shows.
MAX_PRECISION = 4


class ColumnSpec(_FileModel):
    """One canonical column of a dataset schema."""

    type: ColumnType
    role: ColumnRole
    required: bool
    description: Text
    codes: list[CodeSpec] | None = None
    range: ValueRange | None = None
    ordinal: bool = False
    pattern: str | None = None
    #: The pattern in words, for the people who prepare files ("1 to 20 capital letters,
    #: digits and hyphens"): upload errors and the data dictionary say this, never the
    #: regular expression.
    rule: str | None = None
    normalization: Normalisation | None = None
    student_count_column: str | None = None
    #: For a measure: the decimals its means (and a number column's sums) are shown
    #: with to people (gateway/release/formatting.py); JSON keeps full precision.
    precision: int | None = None
    #: How the column coarsens (rating bands, program areas, pooled years), for releases
    #: whose cells are too small at the column's own values.
    hierarchy: Hierarchy | None = None

    @field_validator("codes", mode="before")
    @classmethod
    def _scalar_codes(cls, value: Any) -> Any:
        # A code may be written bare ("PK-2") or as {value, label}; store one shape.
        if isinstance(value, list):
            return [item if isinstance(item, Mapping) else {"value": item} for item in value]
        return value

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from exc
        return value

    @property
    def display_precision(self) -> int:
        """The decimals a mean of this column is shown with: as declared, else 1."""
        return DEFAULT_PRECISION if self.precision is None else self.precision

    @property
    def code_values(self) -> tuple[str | bool | int | float, ...]:
        """The allowed values, in file order (empty when the column is not coded)."""
        return tuple(code.value for code in self.codes or ())


class DatasetSchema(_FileModel):
    """A dataset of SPEC section 6: its canonical columns and their roles."""

    name: Identifier
    description: Text
    providers: list[PartyKind] = Field(min_length=1)
    key: list[str] = Field(min_length=1)
    #: What a row is about: teachers, candidates, results derived from students, or
    #: posted positions (not people: released exactly unless the profile says otherwise).
    unit: RowUnit
    columns: dict[Identifier, ColumnSpec] = Field(min_length=1)

    def column(self, name: str) -> ColumnSpec:
        """The column called ``name``; :class:`NotFound` if the schema has none."""
        try:
            return self.columns[name]
        except KeyError:
            raise NotFound(f"schema {self.name!r} has no column {name!r}") from None

    def columns_with_role(self, *roles: ColumnRole) -> tuple[str, ...]:
        """Names of the columns whose role is one of ``roles``, in file order."""
        return tuple(name for name, spec in self.columns.items() if spec.role in roles)

    @property
    def educator_id_column(self) -> str | None:
        """The column holding the educator ID (the join key), or None for aggregate data."""
        found = self.columns_with_role("educator_id")
        return found[0] if found else None

    @property
    def direct_identifiers(self) -> tuple[str, ...]:
        """Columns accepted in an upload only to be dropped (names, birth dates, emails)."""
        return self.columns_with_role("direct_identifier")

    @property
    def quasi_identifiers(self) -> tuple[str, ...]:
        """Descriptive columns: the only ones that may be release dimensions."""
        return self.columns_with_role("quasi_identifier")

    @property
    def measures(self) -> tuple[str, ...]:
        """Outcome columns (teacher- or student-derived): the only possible release measures."""
        return self.columns_with_role("measure", "student_measure")

    @property
    def student_measures(self) -> tuple[str, ...]:
        """Student-derived measures, whose cells also need ``min_cell_students`` students."""
        return self.columns_with_role("student_measure")


# --- disclosure profiles ---------------------------------------------------------


def _whole_units(value: Decimal, places: int, name: str) -> Decimal:
    """The ledger counts in units of 10^-places: a finer amount would round away."""
    if value != value.quantize(Decimal(1).scaleb(-places)):
        raise ValueError(f"{name} may have at most {places} decimal places (the ledger's unit)")
    return value


def _check_epsilon(value: Decimal) -> Decimal:
    if value <= 0:
        raise ValueError("epsilon must be greater than 0")
    return _whole_units(value, 12, "epsilon")


def _check_delta(value: Decimal) -> Decimal:
    if not Decimal(0) <= value < Decimal(1):
        raise ValueError("delta must be at least 0 and less than 1")
    return _whole_units(value, 18, "delta")


def _check_floor_delta(value: Decimal) -> Decimal:
    if not Decimal(0) < value < Decimal("1e-3"):
        raise ValueError("floor_delta must be greater than 0 and less than 0.001")
    return _whole_units(value, 18, "floor_delta")


def _check_min_cell(value: int) -> int:
    if value < ABSOLUTE_MIN_CELL:
        raise ValueError(
            f"a minimum cell size must be at least {ABSOLUTE_MIN_CELL} "
            f"(PTAC's absolute floor), got {value}"
        )
    return value


class Budget(_FileModel):
    """An (epsilon, delta) differential-privacy amount.

    Decimal, not float: budgets are spent from an exact-decimal ledger, where
    0.1 + 0.2 must equal 0.3. YAML floats are converted through their shortest
    decimal spelling, so ``epsilon: 0.1`` is exactly 0.1.
    """

    epsilon: Annotated[Decimal, Field(strict=False), AfterValidator(_check_epsilon)]
    delta: Annotated[Decimal, Field(strict=False), AfterValidator(_check_delta)]


class DisclosureProfile(_FileModel):
    """The disclosure-control rules an agreement runs under."""

    name: Slug
    description: Text
    min_cell_teachers: Annotated[int, AfterValidator(_check_min_cell)]
    min_cell_students: Annotated[int, AfterValidator(_check_min_cell)]
    #: Everything released under the agreement, to every party together, over its whole
    #: life (its lifetime cap when ``period_budget`` is set).
    privacy_budget: Budget
    #: Optional: the most the agreement may spend in one school year (July 1 to June 30,
    #: named by the year it ends), within ``privacy_budget`` over its life. None: one
    #: period, the agreement's whole life.
    period_budget: Budget | None = None
    per_release_cap: Budget
    #: The least one release may spend: below it noise drowns every cell, and a
    #: near-zero epsilon would let the release path be probed for almost nothing.
    per_release_minimum: Budget = Budget(epsilon=Decimal("0.01"), delta=Decimal("1e-12"))
    #: The delta every release spends for its hard true-data floors (the minimum cell):
    #: the chance that a floor changes what is published (docs/releases.md).
    floor_delta: Annotated[Decimal, Field(strict=False), AfterValidator(_check_floor_delta)] = (
        Decimal("1e-9")
    )
    #: A noisy count must reach at least this many teachers before its cell is
    #: published; the threshold each release uses is the larger of this and the one
    #: ``floor_delta`` requires at the release's noise scale. Default: the minimum cell.
    publish_threshold: Annotated[int, Field(ge=1, le=100_000)] | None = None
    on_bad_rows: OnBadRows
    formula_cells: FormulaCells
    top_bottom_coding: bool
    #: Datasets whose rows are posted positions, not people: ``exact`` releases their
    #: sums as they are (no noise, no minimum, no budget); ``noisy`` treats them as the
    #: counts of people are treated.
    position_data: PositionData = "exact"


# --- agreements ------------------------------------------------------------------


class Party(_FileModel):
    """A signatory of an agreement: a school district or an EPP."""

    id: Slug
    kind: PartyKind
    name: Text


class AgreementDataset(_FileModel):
    """One dataset an agreement lets a party upload, and what of it is kept."""

    name: Identifier
    # Written "schema" in YAML; "schema" itself would shadow a BaseModel attribute.
    # The default is never used: a missing "schema" is filled in from "name".
    schema_name: Identifier = Field(default="", alias="schema")
    provided_by: str
    stored_fields: list[str] = Field(min_length=1)
    header_map: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _schema_defaults_to_name(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "schema" not in data and isinstance(data.get("name"), str):
            return {**data, "schema": data["name"]}
        return data


class RecipientFields(_FileModel):
    """What may appear in the releases one party receives."""

    dimensions: list[str] = Field(default_factory=list)
    measures: list[str] = Field(default_factory=list)


class Disclosure(_FileModel):
    """The disclosure profile an agreement uses, with its own adjustments."""

    profile: Slug
    overrides: dict[str, Any] = Field(default_factory=dict)


class ReportSpec(_FileModel):
    """A named report of the agreement's catalogue.

    Open on purpose: report definitions grow (query templates, parameter
    types); keys beyond ``name``, ``description`` and ``parameters`` are kept
    as extra fields for the release module to read.
    """

    model_config = ConfigDict(extra="allow")

    name: Identifier
    description: Text
    parameters: dict[str, Any] = Field(default_factory=dict)


def _check_share(value: float) -> float:
    if not 0 <= value < 1:
        raise ValueError(f"must be a share of the rows, at least 0 and below 1, got {value}")
    return value


class ExtractApprovers(_FileModel):
    """Who approves an extract: named people of the party that provided its data."""

    #: The providing party: its people approve each request before anyone downloads it.
    party: Slug
    #: Person ids (slugs) of that party who may approve; the operator issues their
    #: credentials naming the person. A person never approves their own request.
    people: list[Slug] = Field(min_length=1)
    #: How many different people of ``people`` must approve a request.
    required: Annotated[int, Field(ge=1)] = 1


class ExtractSpec(_FileModel):
    """A teacher-level extract one or more parties may receive (docs/agreements.md#extracts).

    Fields are written ``dataset.column`` or, when one dataset of the extract stores
    the column, ``column``; each becomes a column of the file named by its column.
    """

    name: Identifier
    description: Text
    #: The parties that may request it.
    recipients: list[Slug] = Field(min_length=1)
    #: The datasets whose rows are joined per teacher (inner join on the pseudonym).
    datasets: list[Identifier] = Field(min_length=1)
    #: Columns the datasets' rows also join on, besides the teacher (``school_year``).
    link_on: list[Identifier] = Field(default_factory=list)
    #: Exactly what the file holds, besides its teacher ID and record ID.
    fields: list[str] = Field(min_length=1)
    #: The fields an outsider could know (experience, school level, program...):
    #: generalised along their hierarchies, then suppressed, until k-anonymous.
    #: Every quasi_identifier column among the fields must be listed.
    quasi_identifiers: list[str] = Field(default_factory=list)
    #: Fields each class of quasi-identifiers must show ``l`` values of (ratings, bands).
    sensitive: list[str] = Field(default_factory=list)
    #: Number fields released as bands: field -> cut points, ascending (a band runs
    #: from one cut, included, to the next, excluded).
    bands: dict[str, list[int | float]] = Field(default_factory=dict)
    #: Each class of quasi-identifier values holds at least k teachers.
    k: Annotated[int, Field(ge=ABSOLUTE_MIN_CELL)]
    #: Each class shows at least l values of every sensitive field (distinct l-diversity).
    l: Annotated[int, Field(ge=2)] | None = None  # noqa: E741 (the literature's name)
    #: The largest share of rows that may be suppressed rather than generalised further.
    max_suppressed: Annotated[float, AfterValidator(_check_share)] = 0.1
    approvers: ExtractApprovers

    def may_approve(self, person_id: str, *, requester_id: str) -> bool:
        """True when ``person_id`` is a listed approver and not the requester."""
        return person_id in self.approvers.people and person_id != requester_id


class AgreementDocument(_FileModel):
    """Exactly what an agreement file holds."""

    id: Slug
    version: Text
    title: Text
    purpose: Text
    parties: list[Party] = Field(min_length=2)
    effective: date
    ends: date
    datasets: list[AgreementDataset] = Field(min_length=1)
    releases: dict[str, RecipientFields] = Field(default_factory=dict)
    disclosure: Disclosure
    #: Optional spending limits of recipients within the agreement's one budget pool:
    #: party id -> {epsilon, delta}. A recipient not listed may spend the whole pool.
    budget_limits: dict[str, Budget] = Field(default_factory=dict)
    reports: list[ReportSpec] = Field(default_factory=list)
    # Values of a release dimension that are public for this agreement (for example
    # the EPP's program codes): tables list every one of them, so group keys never
    # depend on the data.
    public_values: dict[str, list[str | int | bool]] = Field(default_factory=dict)
    #: The agreement's own hierarchies, by release field (``race_ethnicity``, or
    #: ``completers.race_ethnicity`` for one dataset's column): they replace the
    #: schema's hierarchy of that column, if it has one.
    groupings: dict[str, Hierarchy] = Field(default_factory=dict)
    #: Teacher-level extracts parties may request (docs/agreements.md#extracts).
    extracts: list[ExtractSpec] = Field(default_factory=list)

    def extract(self, name: str) -> ExtractSpec:
        """The extract called ``name``; :class:`NotFound` if the agreement declares none."""
        for spec in self.extracts:
            if spec.name == name:
                return spec
        known = ", ".join(spec.name for spec in self.extracts) or "none"
        raise NotFound(f"agreement {self.id!r} declares no extract {name!r} (extracts: {known})")

    def extracts_for(self, party_id: str) -> tuple[ExtractSpec, ...]:
        """The extracts ``party_id`` may request."""
        self.party(party_id)
        return tuple(spec for spec in self.extracts if party_id in spec.recipients)

    def party(self, party_id: str) -> Party:
        """The party with this id; :class:`NotFound` if it did not sign the agreement."""
        for party in self.parties:
            if party.id == party_id:
                return party
        known = ", ".join(p.id for p in self.parties)
        raise NotFound(f"agreement {self.id!r} has no party {party_id!r} (parties: {known})")

    def dataset(self, name: str) -> AgreementDataset:
        """The dataset with this name; :class:`NotFound` if the agreement has none."""
        for dataset in self.datasets:
            if dataset.name == name:
                return dataset
        known = ", ".join(d.name for d in self.datasets)
        raise NotFound(f"agreement {self.id!r} has no dataset {name!r} (datasets: {known})")

    def recipient_fields(self, party_id: str) -> RecipientFields:
        """What ``party_id`` may receive; empty allowlists if the agreement lists nothing."""
        self.party(party_id)  # unknown parties are an error, not an empty allowlist
        return self.releases.get(party_id, RecipientFields())

    def datasets_storing(self, field: str) -> tuple[AgreementDataset, ...]:
        """The datasets a release field refers to.

        ``"dataset.column"`` names one dataset's column; a plain ``"column"``
        names that column in every dataset that stores it.
        """
        dataset_name, dot, column = field.rpartition(".")
        return tuple(
            d
            for d in self.datasets
            if column in d.stored_fields and (not dot or d.name == dataset_name)
        )


class Agreement(AgreementDocument):
    """A checked agreement, as the rest of the gateway sees it.

    Adds what the loader works out: the disclosure profile with the
    agreement's overrides merged in, the SHA-256 of the file (so a changed
    agreement is noticed and logged), and where it was read from.
    """

    resolved_disclosure: DisclosureProfile
    content_hash: str
    source_path: Path
    #: The hierarchy in force for each dataset column that has one: dataset name ->
    #: column -> hierarchy (the agreement's groupings over the schema's, kept to the
    #: agreement's public values where it lists them).
    hierarchies: dict[str, dict[str, Hierarchy]] = Field(default_factory=dict)

    def hierarchy(self, dataset: str, column: str) -> Hierarchy | None:
        """How ``column`` of ``dataset`` coarsens under this agreement; None if it does not.

        :class:`NotFound` if the agreement has no dataset ``dataset``.
        """
        self.dataset(dataset)
        return self.hierarchies.get(dataset, {}).get(column)

    def field_hierarchy(self, field: str) -> Hierarchy | None:
        """How a release field (``school_year`` or ``staffing.school_year``) coarsens.

        A plain field stored by several datasets coarsens alike in each of them
        when it is a release field (the checker refuses anything else).
        """
        column = field.rpartition(".")[2]
        for dataset in self.datasets_storing(field):
            found = self.hierarchy(dataset.name, column)
            if found is not None:
                return found
        return None

    def in_force(self, on: date) -> bool:
        """True when ``on`` lies between ``effective`` and ``ends``, both included."""
        return self.effective <= on <= self.ends

    def require_in_force(self, on: date, *, refused: str) -> None:
        """Raise :class:`PolicyViolation` naming what is refused when not in force on ``on``."""
        if not self.in_force(on):
            raise PolicyViolation(
                f"agreement {self.id!r} is not in force today ({self.effective} to "
                f"{self.ends}); {refused} are refused"
            )
