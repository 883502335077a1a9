"""Realistic synthetic extracts for every dataset of the catalogue (docs/agreements.md).

Used by ``gateway demo``, by tests and by benchmarks (it lives outside the gateway
package: the product does not ship demo data). Public surface::

    generate_agreement_extracts(agreement, schemas, out_dir, *, seed=0, scale=1.0,
                                epp_scale=None) -> [Extract]
    write_evaluations_csv(path, *, rows, seed=0) -> Path      # large file for the upload benchmark

Each agreement gets one simulated "world": the EPP's programs and cohorts
(2020 to 2026, the last still in progress), and the district's workforce over
the school years 2021 to 2025 (a 2020 burn-in year is simulated, never
written). Completers are hired by the district (about half of them, fewer in a
special-education cooperative outside special education), work there for a
while and leave; the district also employs many teachers prepared elsewhere.
Every file of the agreement is then cut from that world, so the same teacher
appears on both sides and the linkage questions have real answers.

The two sides write the same state educator ID differently, as real extracts
do: the district zero-pads to nine digits and sometimes adds spaces, the EPP
writes the bare number, lower-cases letter prefixes and leaves stray blanks.
Only the differences the dataset's normalisation undoes are used, and every
ID is checked to normalise (with :class:`gateway.pseudonym.Normalisation`) to
the canonical ID and to match the schema's pattern.

Randomness comes from numpy's seeded ``Generator``, one stream per agreement
and purpose, so a seed always gives the same files. That is fine here because
this is synthetic test data, not privacy protection: differential-privacy
noise is never drawn from numpy, only from OpenDP (gateway/release/noise.py).
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from gateway.agreements.models import Agreement, AgreementDataset, ColumnSpec, DatasetSchema
from gateway.pseudonym import Normalisation

__all__ = ["Extract", "generate_agreement_extracts", "write_evaluations_csv"]

FileFormat = Literal["csv", "xlsx", "parquet"]
Side = Literal["district", "epp"]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Extract:
    """One generated file: which agreement, dataset and party it is for, and where it is."""

    agreement_id: str
    dataset: str  # the agreement's dataset name
    party: str  # provided_by
    path: Path
    rows: int


# --- the simulated calendar ----------------------------------------------------------

#: School years written to the district's files (2025 = 2024-25).
SCHOOL_YEARS: Final = tuple(range(2021, 2026))
#: Program cohorts, by the year they complete; the last one is still in progress.
COHORTS: Final = tuple(range(2020, 2027))
_BURN_IN: Final = 2020  # simulated so that 2021 has hires and leavers, never written
_SIM_YEARS: Final = tuple(range(_BURN_IN, SCHOOL_YEARS[-1] + 1))
_PROJECTED_COHORTS: Final = (2027, 2028)  # candidate interest only

# --- teaching fields ------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    """A teaching field: its licensure area, the subjects it teaches, where it teaches."""

    licensure: str
    subjects: tuple[str, ...]
    levels: tuple[str, ...]  # ES (PK-5), MS (6-8), HS (9-12)


_FIELDS: Final[dict[str, _Field]] = {
    "ECE": _Field("ECE", ("ELEM",), ("ES",)),
    "ELEM": _Field("ELEM", ("ELEM",), ("ES",)),
    "MID": _Field("MID", ("ELA", "MATH", "SCI", "SS"), ("MS",)),
    "SPED": _Field("SPED", ("SPED",), ("ES", "MS", "HS")),
    "ELA": _Field("ELA", ("ELA",), ("MS", "HS")),
    "MATH": _Field("MATH", ("MATH",), ("MS", "HS")),
    "SCI": _Field("SCI", ("SCI",), ("MS", "HS")),
    "SS": _Field("SS", ("SS",), ("MS", "HS")),
    "WL": _Field("WL", ("WL",), ("MS", "HS")),
    "ESL": _Field("ESL", ("ESL",), ("ES", "MS", "HS")),
    "BIL": _Field("BIL", ("ESL",), ("ES",)),
    "ART": _Field("ART", ("ARTS",), ("ES", "MS", "HS")),
    "MUS": _Field("MUS", ("ARTS",), ("ES", "MS", "HS")),
    "PE": _Field("PE", ("PE",), ("ES", "MS", "HS")),
    "CTE": _Field("CTE", ("CTE",), ("HS",)),
}
_ITINERANT: Final = frozenset({"ART", "MUS", "PE", "WL"})  # often split between two schools

# Share of a district's teachers in each field.
# fmt: off
_DISTRICT_MIX: Final = {
    "ELEM": 29, "ECE": 5, "SPED": 13, "MATH": 8, "ELA": 9, "SCI": 7, "SS": 6, "MID": 4, "WL": 3,
    "ESL": 4, "BIL": 1, "ART": 2, "MUS": 3, "PE": 4, "CTE": 2,
}
# A special-education cooperative employs mostly special educators.
_COOPERATIVE_MIX: Final = {
    "SPED": 70, "ECE": 6, "ELEM": 6, "ESL": 5, "MID": 3, "PE": 3, "MUS": 2, "ART": 1, "MATH": 1,
    "ELA": 1, "BIL": 1, "CTE": 1,
}

# Vacancies: share of postings still unfilled on day one, and hard-to-fill postings that
# no hire ever shows up against (mean per school and year). Special education is the
# hardest to fill everywhere.
_UNFILLED_SHARE: Final = {
    "SPED": 0.4, "BIL": 0.35, "ESL": 0.25, "MATH": 0.22, "SCI": 0.22, "WL": 0.2, "CTE": 0.2,
}
_NEVER_FILLED: Final = {"SPED": 0.35, "BIL": 0.1, "ESL": 0.1, "MATH": 0.1, "SCI": 0.1}
# fmt: on

# --- EPP programs -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Program:
    code: str
    field: str
    size: int  # typical enrolment per cohort at scale 1; 0 for a very small program (2-6)


_CORE_PROGRAMS: Final = (
    _Program("ELEM", "ELEM", 36),
    _Program("SPED", "SPED", 24),
    _Program("SECELA", "ELA", 14),
    _Program("SECMATH", "MATH", 13),
)
_OPTIONAL_PROGRAMS: Final = (
    _Program("ECE", "ECE", 15),
    _Program("SECSCI", "SCI", 11),
    _Program("SECSS", "SS", 12),
    _Program("MIDGR", "MID", 13),
)
_SMALL_PROGRAMS: Final = (
    _Program("ESL", "ESL", 0),
    _Program("WL", "WL", 0),
    _Program("MUSED", "MUS", 0),
    _Program("ARTED", "ART", 0),
    _Program("PEH", "PE", 0),
    _Program("CTE", "CTE", 0),
    _Program("BILED", "BIL", 0),
)

# --- people -----------------------------------------------------------------------------

_GENDERS: Final = ("F", "M", "X", "U")
_RACES: Final = ("HISP", "AIAN", "ASIAN", "BLACK", "NHPI", "WHITE", "MULTI", "UNK")
# The demographic mix changes along the pipeline: candidates are more diverse than the
# incumbent workforce, and candidates of colour withdraw more often (_WITHDRAWAL).
_CANDIDATE_GENDER: Final = (0.74, 0.23, 0.01, 0.02)
_CANDIDATE_RACE: Final = (0.16, 0.01, 0.05, 0.11, 0.005, 0.58, 0.05, 0.035)
_WORKFORCE_GENDER: Final = (0.76, 0.235, 0.003, 0.002)
_WORKFORCE_RACE: Final = (0.09, 0.005, 0.03, 0.08, 0.003, 0.74, 0.02, 0.032)
_WITHDRAWAL: Final = {"WHITE": 0.07, "ASIAN": 0.07, "UNK": 0.08}
_WITHDRAWAL_OTHERS: Final = 0.14

# fmt: off
_FEMALE_NAMES: Final = (
    "Maria", "Jennifer", "Emily", "Sarah", "Jessica", "Ashley", "Megan", "Lauren", "Hannah",
    "Rachel", "Olivia", "Emma", "Sophia", "Abigail", "Madison", "Grace", "Chloe", "Natalie",
    "Katherine", "Elizabeth", "Rebecca", "Amanda", "Brianna", "Jasmine", "Aaliyah", "Destiny",
    "Keisha", "Imani", "Ana", "Guadalupe", "Ximena", "Lucía", "Mei", "Priya", "Aisha", "Fatima",
    "Leilani", "Kaya", "Renée", "Zoë", "Siobhan", "Nicole", "Heather", "Amy",
)
_MALE_NAMES: Final = (
    "James", "Michael", "David", "Daniel", "Matthew", "Christopher", "Andrew", "Joshua", "Ryan",
    "Tyler", "Brandon", "Jacob", "Ethan", "Nathan", "Kevin", "Marcus", "Darius", "Jamal", "Andre",
    "Terrence", "José", "Luis", "Carlos", "Miguel", "Juan", "Diego", "Wei", "Minh", "Arjun",
    "Omar", "Hassan", "Kai", "Thomas", "Benjamin", "Samuel", "Patrick", "Sean", "Eric", "Brian",
    "Jonathan", "Noah", "Logan",
)
_LAST_NAMES: Final = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Miller", "Davis", "Wilson", "Anderson",
    "Taylor", "Thomas", "Moore", "Martin", "Jackson", "Thompson", "White", "Harris", "Clark",
    "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Hill", "Green",
    "Adams", "Baker", "Nelson", "Carter", "Mitchell", "Roberts", "Phillips", "Evans", "Turner",
    "Parker", "Collins", "Edwards", "Stewart", "Morris", "Murphy", "Cook", "Rogers", "O'Brien",
    "Sullivan", "Kowalski", "Nowak", "Schmidt", "Müller", "Larsen", "Johansson", "García",
    "Rodríguez", "Martínez", "Hernández", "López", "González", "Pérez", "Sánchez", "Ramírez",
    "Torres", "Flores", "Rivera", "Muñoz", "Peña", "Castillo", "Ortiz", "Morales", "Nguyen",
    "Tran", "Le", "Kim", "Park", "Lee", "Chen", "Wang", "Li", "Zhang", "Patel", "Shah", "Singh",
    "Khan", "Ali", "Yazzie", "Begay", "Kealoha", "Washington", "Jefferson", "Okafor", "Mensah",
    "Diallo", "Abdi", "Haddad", "Cohen", "Rossi", "Russo", "Dubois",
)
# fmt: on

# --- ratings ----------------------------------------------------------------------------

# Latent teacher quality plus noise, cut into the four levels. Cut points put about 2% at
# 1, 10% at 2, 66% at 3 and 22% at 4 for summative ratings; observations are a little
# more spread out.
_RATING_CUTS: Final = (-2.39, -1.43, 0.90)
_OBSERVATION_CUTS: Final = (-2.24, -1.14, 0.88)
_DOMAIN_SHIFT: Final = {"planning": 0.1, "environment": 0.15, "instruction": -0.15}
_SUPERVISOR_LENIENCY: Final = 0.35  # EPP supervisors rate a little higher: what calibration finds
# fmt: off
_CONSTRUCT_SHIFT: Final = {
    "care": 0.25, "confer": 0.05, "captivate": -0.2, "clarify": 0.1, "consolidate": -0.1,
    "challenge": 0.15, "classroom_management": -0.15,
}
_TESTED: Final = {
    "ELEM": ("ELA", "MATH"), "ELA": ("ELA",), "MATH": ("MATH",),
    "SCI": ("SCI",), "SPED": ("ELA", "MATH"), "ESL": ("ELA",),
}
# fmt: on
# Share of tested-subject teachers with enough attributable students for a growth score.
_GROWTH_COVERAGE: Final = {"SPED": 0.35, "ESL": 0.35, "SCI": 0.65}
_SURVEY_FIRST_YEAR: Final = 2023  # the district's student survey started in 2022-23
_LONGEST_CAREER: Final = 40  # experience of incumbents, before the years simulated

# --- file formats -----------------------------------------------------------------------

# Mostly CSV; HR vacancy reports and admissions counts arrive as Excel workbooks, and the
# state's growth-model output as Parquet, so a demo exercises all three readers.
_FORMAT_BY_SCHEMA: Final[dict[str, FileFormat]] = {
    "vacancies": "xlsx",
    "candidate_interest": "xlsx",
    "value_added": "parquet",
}
_NOTES: Final = ("", "", "", "", "checked", "late entry", "updated by HR", "see attached")

_DISTRICT_ID_WIDTH: Final = 9
_LETTER_PREFIXES: Final = "ABCDEFGHJKLMNPRSTUVWXYZ"
_LETTER_ID_SHARE: Final = 0.04  # out-of-state and provisional licences carry a letter prefix


def generate_agreement_extracts(
    agreement: Agreement,
    schemas: Mapping[str, DatasetSchema],
    out_dir: Path,
    *,
    seed: int = 0,
    scale: float = 1.0,
    epp_scale: float | None = None,
) -> list[Extract]:
    """Write one synthetic file per dataset of ``agreement`` under ``out_dir/<agreement id>/``.

    The files are valid for their schemas (codes, ranges, ID patterns, unique keys),
    carry the party's own headers where the agreement maps them, the direct
    identifiers the schema knows (to be dropped at upload) and one column the
    agreement does not store. The same ``seed`` and ``scale`` give the same content.
    ``scale`` multiplies the number of people, hence of rows (0.1 for fast tests).
    ``epp_scale`` (default: ``scale``) multiplies the EPP's cohorts alone, for a
    partnership whose EPP is smaller or larger than its district (bench/utility.py).
    """
    if not scale > 0:
        raise ValueError(f"scale must be greater than 0, got {scale}")
    if epp_scale is not None and not epp_scale > 0:
        raise ValueError(f"epp_scale must be greater than 0, got {epp_scale}")
    for dataset in agreement.datasets:
        if dataset.schema_name not in schemas:
            raise ValueError(
                f"agreement {agreement.id!r}: dataset {dataset.name!r} needs schema "
                f"{dataset.schema_name!r}, which is not loaded"
            )
    world = _World.simulate(
        agreement,
        schemas,
        seed=seed,
        scale=scale,
        epp_scale=scale if epp_scale is None else epp_scale,
    )
    folder = out_dir / agreement.id
    folder.mkdir(parents=True, exist_ok=True)
    extracts = []
    for dataset in agreement.datasets:
        schema = schemas[dataset.schema_name]
        side = _side_of(agreement, dataset)
        canonical = world.dataset_frame(schema, side)
        rng = _rng(seed, agreement.id, dataset.name, "render")
        frame = _render(canonical, dataset=dataset, schema=schema, side=side, world=world, rng=rng)
        fmt = _FORMAT_BY_SCHEMA.get(schema.name, "csv")
        if fmt == "parquet":
            frame = _typed(frame, dataset=dataset, schema=schema)
        path = _write(frame, folder / f"{dataset.name}.{fmt}", fmt, sheet=dataset.name)
        extracts.append(
            Extract(
                agreement_id=agreement.id,
                dataset=dataset.name,
                party=dataset.provided_by,
                path=path,
                rows=len(frame),
            )
        )
    return extracts


# --- the world ----------------------------------------------------------------------------


def _rng(seed: int, *labels: str) -> np.random.Generator:
    """An independent, reproducible stream for one purpose of one agreement."""
    digest = hashlib.sha256(":".join([str(seed), *labels]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest, "big"))


def _side_of(agreement: Agreement, dataset: AgreementDataset) -> Side:
    for party in agreement.parties:
        if party.id == dataset.provided_by:
            return party.kind
    raise ValueError(
        f"agreement {agreement.id!r}: dataset {dataset.name!r} is provided by "
        f"{dataset.provided_by!r}, which is not a party"
    )


def _pick(rng: np.random.Generator, values: Sequence[str], n: int, p: Sequence[float]) -> Any:
    weights = np.asarray(p, dtype=float)
    return np.asarray(values, dtype=object)[
        rng.choice(len(values), size=n, p=weights / weights.sum())
    ]


def _ordinal(latent: FloatArray, cuts: Sequence[float]) -> IntArray:
    """Levels 1..len(cuts)+1 of ``latent`` cut at ``cuts``."""
    return (np.searchsorted(np.asarray(cuts), latent) + 1).astype(np.int64)


def _school_days(year: int) -> npt.NDArray[np.datetime64]:
    """Weekdays of school year ``year`` (September to early June, no winter break)."""
    days = np.arange(
        np.datetime64(f"{year - 1}-09-03"), np.datetime64(f"{year}-06-06"), dtype="datetime64[D]"
    )
    weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday: 0 = Monday
    winter_break = (days >= np.datetime64(f"{year - 1}-12-22")) & (
        days <= np.datetime64(f"{year}-01-02")
    )
    keep: npt.NDArray[np.bool_] = (weekday < 5) & ~winter_break
    return days[keep]


class _World:
    """One agreement's people, programs, schools and careers, before any file is cut."""

    def __init__(self) -> None:
        self.people = pd.DataFrame()  # one row per person (index: person number)
        self.roster = pd.DataFrame()  # EPP program records
        self.spells = pd.DataFrame()  # district employment spells (interns included)
        self.schools = pd.DataFrame()  # district_code, school_code, level
        self.epp_domain = "epp.example"
        self.rng_labels: tuple[int, str] = (0, "")
        self.experience_cap = 50

    # The simulation proper.

    @classmethod
    def simulate(
        cls,
        agreement: Agreement,
        schemas: Mapping[str, DatasetSchema],
        *,
        seed: int,
        scale: float,
        epp_scale: float,
    ) -> _World:
        world = cls()
        world.rng_labels = (seed, agreement.id)
        rng = _rng(seed, agreement.id, "world")
        epp = next((p for p in agreement.parties if p.kind == "epp"), None)
        district = next((p for p in agreement.parties if p.kind == "district"), None)
        world.epp_domain = f"{epp.id if epp else 'epp'}.example"
        cooperative = district is not None and "cooperative" in district.name.lower()
        experience = schemas.get("evaluations")
        if experience is not None and "years_experience" in experience.columns:
            bound = experience.columns["years_experience"].range
            if bound is not None and bound.max is not None:
                world.experience_cap = int(bound.max)

        roster = _simulate_roster(rng, epp_scale, agreement.public_values.get("program_code", ()))
        people = _candidates(rng, roster)
        world.schools = _simulate_schools(rng, scale, cooperative=cooperative)
        size = max(25, round((320 if cooperative else 900) * scale))
        mix = _COOPERATIVE_MIX if cooperative else _DISTRICT_MIX
        world.roster = roster
        world.people, world.spells = _simulate_district(
            rng,
            people,
            roster,
            world.schools,
            size=size,
            mix=mix,
            cooperative=cooperative,
            cap=world.experience_cap,
        )
        used = [schemas[d.schema_name] for d in agreement.datasets]
        world.people["state_id"] = _state_ids(rng, len(world.people), used)
        return world

    # Cutting datasets out of the world.

    def dataset_frame(self, schema: DatasetSchema, side: Side) -> pd.DataFrame:
        """The dataset in canonical columns, with a ``_person`` column for ID columns."""
        rng = _rng(*self.rng_labels, schema.name, side, "values")
        builders = {
            "completers": self._completers,
            "candidate_interest": self._candidate_interest,
            "evaluations": self._evaluations,
            "staffing": self._staffing,
            "value_added": self._value_added,
            "student_surveys": self._student_surveys,
            "vacancies": self._vacancies,
        }
        if schema.name == "observations":
            return self._observations(rng, schema, side)
        try:
            builder = builders[schema.name]
        except KeyError:
            raise ValueError(f"no synthetic data generator for schema {schema.name!r}") from None
        return builder(rng, schema)

    def _completers(self, rng: np.random.Generator, schema: DatasetSchema) -> pd.DataFrame:
        roster = self.roster
        people = self.people.loc[roster["_person"]]
        first = people["first_name"].to_numpy()
        last = people["last_name"].to_numpy()
        number = rng.integers(1, 100, size=len(roster))
        email = [
            f"{_ascii(f[0])}{_ascii(la)}{n}@students.{self.epp_domain}".lower()
            for f, la, n in zip(first, last, number, strict=True)
        ]
        return pd.DataFrame(
            {
                "_person": roster["_person"].to_numpy(),
                "first_name": first,
                "last_name": last,
                "email": email,
                "program_code": roster["program_code"].to_numpy(),
                "cohort_year": roster["cohort_year"].to_numpy(),
                "completion_status": roster["completion_status"].to_numpy(),
                "licensure_area": roster["licensure_area"].to_numpy(),
                "gender": people["epp_gender"].to_numpy(),
                "race_ethnicity": people["epp_race"].to_numpy(),
            }
        )

    def _candidate_interest(self, rng: np.random.Generator, schema: DatasetSchema) -> pd.DataFrame:
        roster = self.roster.assign(
            intended_subject=self.people.loc[self.roster["_person"], "subject"].to_numpy()
        )
        keys = ["cohort_year", "intended_subject", "licensure_area"]
        counts = roster.groupby(keys).size().rename("candidates").reset_index()
        # Later cohorts: interest in the recent cohorts' areas, special education growing.
        recent = counts[counts["cohort_year"] >= COHORTS[-1] - 2]
        mean = recent.groupby(keys[1:])["candidates"].mean().reset_index()
        projected = []
        for step, year in enumerate(_PROJECTED_COHORTS, start=1):
            growth = np.where(mean["licensure_area"] == "SPED", 1.15**step, 1.0)
            projected.append(
                mean.assign(
                    cohort_year=year,
                    candidates=rng.poisson(mean["candidates"].to_numpy() * growth),
                )
            )
        undecided = pd.DataFrame(
            {
                "cohort_year": list(_PROJECTED_COHORTS),
                "intended_subject": "OTHER",
                "licensure_area": "ELEM",
                "candidates": rng.integers(1, 6, size=len(_PROJECTED_COHORTS)),
            }
        )
        frame = pd.concat([counts, *projected, undecided], ignore_index=True)
        frame = frame.groupby(keys, as_index=False)["candidates"].sum()
        frame = frame[frame["candidates"] > 0]
        return frame.astype({"cohort_year": "int64", "candidates": "int64"})[[*keys, "candidates"]]

    def _staffing_rows(self) -> pd.DataFrame:
        """One row per spell, school year and school (split positions give two)."""
        spells = self.spells
        rows = []
        for year in SCHOOL_YEARS:
            active = spells[(spells["start"] <= year) & (spells["end"] >= year)]
            first = active.assign(school_year=year, school_code=active["school"])
            rows.append(first)
            split = active[active["second_school"] != ""]
            rows.append(split.assign(school_year=year, school_code=split["second_school"]))
        staffing = pd.concat(rows, ignore_index=True)
        staffing["years_experience"] = np.minimum(
            staffing["experience"] + staffing["school_year"] - staffing["start"],
            self.experience_cap,
        )
        return staffing.merge(self.schools[["school_code", "district_code"]], on="school_code")

    def _staffing(self, rng: np.random.Generator, schema: DatasetSchema) -> pd.DataFrame:
        staffing = self._staffing_rows()
        people = self.people.loc[staffing["_person"]]
        return pd.DataFrame(
            {
                "_person": staffing["_person"].to_numpy(),
                "first_name": people["first_name"].to_numpy(),
                "last_name": people["last_name"].to_numpy(),
                "school_year": staffing["school_year"].to_numpy(),
                "district_code": staffing["district_code"].to_numpy(),
                "school_code": staffing["school_code"].to_numpy(),
                "position": staffing["position"].to_numpy(),
                "licensure_area": staffing["licensure_area"].to_numpy(),
                "fte": staffing["fte"].to_numpy(),
            }
        ).sort_values(["school_year", "school_code", "_person"], ignore_index=True)

    def _teacher_years(self) -> pd.DataFrame:
        """Evaluated teacher-years: main assignment only, interns and substitutes excluded."""
        staffing = self._staffing_rows()
        main = staffing[
            (staffing["school_code"] == staffing["school"])
            & staffing["position"].isin(["teacher", "co_teacher", "specialist"])
        ]
        # A few evaluations are missing (leave, late hire, unfinished cycle).
        keep = _rng(*self.rng_labels, "evaluated").random(len(main)) < 0.96
        return main[keep].reset_index(drop=True)

    def _evaluations(self, rng: np.random.Generator, schema: DatasetSchema) -> pd.DataFrame:
        years = self._teacher_years()
        people = self.people.loc[years["_person"]]
        novice = np.select(
            [years["years_experience"] == 0, years["years_experience"] == 1], [-0.4, -0.2], 0.0
        )
        latent = people["quality"].to_numpy() + novice + rng.normal(0, 0.6, len(years))
        return pd.DataFrame(
            {
                "_person": years["_person"].to_numpy(),
                "first_name": people["first_name"].to_numpy(),
                "last_name": people["last_name"].to_numpy(),
                "birth_date": people["birth_date"].to_numpy(),
                "school_year": years["school_year"].to_numpy(),
                "district_code": years["district_code"].to_numpy(),
                "school_code": years["school_code"].to_numpy(),
                "assignment_subject": years["subject"].to_numpy(),
                "grade_band": years["grade_band"].to_numpy(),
                "years_experience": years["years_experience"].to_numpy(),
                "summative_rating": _ordinal(latent, _RATING_CUTS),
                "gender": people["district_gender"].to_numpy(),
                "race_ethnicity": people["district_race"].to_numpy(),
            }
        ).sort_values(["school_year", "last_name", "first_name", "_person"], ignore_index=True)

    def _value_added(self, rng: np.random.Generator, schema: DatasetSchema) -> pd.DataFrame:
        years = self._teacher_years()
        years = years[years["grade_band"] != "PK-2"]
        parts = []
        for subject in ("ELA", "MATH", "SCI"):
            tested = years["subject"].map(lambda s, t=subject: t in _TESTED.get(s, ()))
            share = years["subject"].map(_GROWTH_COVERAGE).fillna(0.9).to_numpy()
            chosen = years[tested.to_numpy() & (rng.random(len(years)) < share)]
            parts.append(chosen.assign(test_subject=subject))
        rows = pd.concat(parts, ignore_index=True)
        quality = self.people.loc[rows["_person"], "quality"].to_numpy()
        growth = np.clip(np.rint(50 + 5 * quality + rng.normal(0, 11, len(rows))), 1, 99)
        elementary = (rows["grade_band"] == "3-5") | (rows["position"] == "co_teacher")
        students = np.where(
            elementary, rng.integers(15, 31, len(rows)), rng.integers(40, 151, len(rows))
        )
        people = self.people.loc[rows["_person"]]
        frame = pd.DataFrame(
            {
                "_person": rows["_person"].to_numpy(),
                "first_name": people["first_name"].to_numpy(),
                "last_name": people["last_name"].to_numpy(),
                "school_year": rows["school_year"].to_numpy(),
                "subject": rows["test_subject"].to_numpy(),
                "growth_score": growth.astype(np.int64),
                "student_count": students.astype(np.int64),
            }
        )
        return frame.sort_values(["school_year", "_person", "subject"], ignore_index=True)

    def _student_surveys(self, rng: np.random.Generator, schema: DatasetSchema) -> pd.DataFrame:
        years = self._teacher_years()
        years = years[
            (years["school_year"] >= _SURVEY_FIRST_YEAR)
            & (years["grade_band"] != "PK-2")
            & years["position"].isin(["teacher", "co_teacher"])
        ]
        years = years[rng.random(len(years)) < 0.85].reset_index(drop=True)
        constructs = [str(c) for c in schema.column("construct").code_values]
        rows = years.loc[years.index.repeat(len(constructs))].reset_index(drop=True)
        rows["construct"] = constructs * len(years)
        secondary = rows["grade_band"].isin(["6-8", "9-12"]).to_numpy()
        respondents = np.where(
            secondary, rng.integers(35, 121, len(rows)), rng.integers(15, 29, len(rows))
        )
        # One class answers every construct: the same respondents per teacher and year.
        respondents = (
            pd.Series(respondents).groupby(rows.index // len(constructs)).transform("first")
        )
        quality = self.people.loc[rows["_person"], "quality"].to_numpy()
        shift = rows["construct"].map(_CONSTRUCT_SHIFT).fillna(0.0).to_numpy()
        low, high = _bounds(schema.column("mean_score"), 1.0, 5.0)
        mean = np.clip(
            np.round(3.85 + 0.2 * quality + shift + rng.normal(0, 0.25, len(rows)), 2), low, high
        )
        people = self.people.loc[rows["_person"]]
        return pd.DataFrame(
            {
                "_person": rows["_person"].to_numpy(),
                "first_name": people["first_name"].to_numpy(),
                "last_name": people["last_name"].to_numpy(),
                "school_year": rows["school_year"].to_numpy(),
                "construct": rows["construct"].to_numpy(),
                "mean_score": mean,
                "respondent_count": np.clip(respondents.to_numpy(), 10, 120).astype(np.int64),
            }
        )

    def _observations(
        self, rng: np.random.Generator, schema: DatasetSchema, side: Side
    ) -> pd.DataFrame:
        if side == "epp":
            visits = self._supervisor_visits()
            role, bias = "epp_supervisor", _SUPERVISOR_LENIENCY
        else:
            visits = self._evaluator_visits()
            role, bias = "district_evaluator", 0.0
        visits = visits.loc[visits.index.repeat(visits["visits"])].reset_index(drop=True)
        visits["visit"] = visits.groupby(["_person", "school_year"]).cumcount()
        dates = []
        for year, group in visits.groupby("school_year", sort=False):
            days = _school_days(int(year))
            # Visit i of k falls in the i-th of k disjoint runs of school days, so one
            # teacher's visits in a year never share a date (the key includes the date).
            visit = group["visit"].to_numpy()
            k = group["visits"].to_numpy()
            first = visit * len(days) // k
            after = (visit + 1) * len(days) // k
            index = first + (rng.random(len(group)) * (after - first)).astype(np.int64)
            dates.append(pd.Series(days[index].astype(str), index=group.index))
        visits["observation_date"] = pd.concat(dates).sort_index()
        domains = [str(d) for d in schema.column("rubric_domain").code_values]
        rows = visits.loc[visits.index.repeat(len(domains))].reset_index(drop=True)
        rows["rubric_domain"] = domains * len(visits)
        quality = self.people.loc[rows["_person"], "quality"].to_numpy()
        shift = rows["rubric_domain"].map(_DOMAIN_SHIFT).fillna(0.2).to_numpy()
        latent = quality + shift + bias + rows["novice"].to_numpy()
        latent = latent + rng.normal(0, 0.65, len(rows))
        people = self.people.loc[rows["_person"]]
        return pd.DataFrame(
            {
                "_person": rows["_person"].to_numpy(),
                "first_name": people["first_name"].to_numpy(),
                "last_name": people["last_name"].to_numpy(),
                "school_year": rows["school_year"].to_numpy(),
                "observer_role": role,
                "rubric_domain": rows["rubric_domain"].to_numpy(),
                "score": _ordinal(latent, _OBSERVATION_CUTS),
                "observation_date": rows["observation_date"].to_numpy(),
            }
        )

    def _supervisor_visits(self) -> pd.DataFrame:
        """EPP supervisors: three visits in the student-teaching year, two in the first job."""
        roster = self.roster
        student_teaching = roster[roster["cohort_year"].isin(SCHOOL_YEARS)]
        student_teaching = pd.DataFrame(
            {
                "_person": student_teaching["_person"].to_numpy(),
                "school_year": student_teaching["cohort_year"].to_numpy(),
                "visits": np.where(student_teaching["completion_status"] == "withdrawn", 1, 3),
                "novice": -0.5,
            }
        )
        spells = self.spells
        induction = spells[
            spells["from_epp"]
            & (spells["position"] != "intern")
            & spells["start"].isin(SCHOOL_YEARS)
        ]
        induction = pd.DataFrame(
            {
                "_person": induction["_person"].to_numpy(),
                "school_year": induction["start"].to_numpy(),
                "visits": 2,
                "novice": -0.3,
            }
        )
        return pd.concat([student_teaching, induction], ignore_index=True)

    def _evaluator_visits(self) -> pd.DataFrame:
        """District evaluators: early-career teachers twice a year, others once; interns once."""
        years = self._teacher_years()
        teachers = pd.DataFrame(
            {
                "_person": years["_person"].to_numpy(),
                "school_year": years["school_year"].to_numpy(),
                "visits": np.where(years["years_experience"] < 3, 2, 1),
                "novice": np.select(
                    [years["years_experience"] == 0, years["years_experience"] == 1],
                    [-0.3, -0.15],
                    0.0,
                ),
            }
        )
        staffing = self._staffing_rows()
        interns = staffing[staffing["position"] == "intern"]
        interns = pd.DataFrame(
            {
                "_person": interns["_person"].to_numpy(),
                "school_year": interns["school_year"].to_numpy(),
                "visits": 1,
                "novice": -0.5,
            }
        )
        return pd.concat([teachers, interns], ignore_index=True).drop_duplicates(
            ["_person", "school_year"]
        )

    def _vacancies(self, rng: np.random.Generator, schema: DatasetSchema) -> pd.DataFrame:
        spells = self.spells
        hires = spells[
            spells["start"].isin(SCHOOL_YEARS)
            & spells["position"].isin(["teacher", "co_teacher", "specialist"])
        ]
        keys = ["school_year", "school_code", "field", "subject"]
        filled = (
            hires.assign(school_year=hires["start"], school_code=hires["school"])
            .groupby(keys)
            .size()
            .rename("filled")
        )
        # Every field a school's level employs, every year, even with no hire.
        grid = [
            (year, school.school_code, name, field.subjects[0])
            for year in SCHOOL_YEARS
            for school in self.schools.itertuples()
            for name, field in _FIELDS.items()
            if school.level in field.levels
        ]
        index = pd.MultiIndex.from_tuples(grid, names=keys).union(filled.index)
        frame = filled.reindex(index, fill_value=0).reset_index()
        share = frame["field"].map(_UNFILLED_SHARE).fillna(0.05).to_numpy()
        never = frame["field"].map(_NEVER_FILLED).fillna(0.01).to_numpy()
        filled_n = frame["filled"].to_numpy()
        unfilled = rng.poisson(filled_n * share / (1 - share) + never)
        frame["positions_posted"] = filled_n + unfilled
        frame["positions_unfilled"] = unfilled
        frame["licensure_area"] = frame["field"].map(lambda f: _FIELDS[f].licensure)
        frame = frame[frame["positions_posted"] > 0]
        key = ["school_year", "school_code", "subject", "licensure_area"]
        frame = frame.groupby(key, as_index=False)[["positions_posted", "positions_unfilled"]].sum()
        cap = _bounds(schema.column("positions_posted"), 0, 1000)[1]
        frame["positions_unfilled"] = np.minimum(frame["positions_unfilled"], cap)
        frame["positions_posted"] = np.minimum(frame["positions_posted"], cap)
        return frame.astype({"positions_posted": "int64", "positions_unfilled": "int64"})


def _bounds(spec: ColumnSpec, low: float, high: float) -> tuple[float, float]:
    """The column's range, defaulting to ``low``/``high`` where it sets none."""
    if spec.range is None:
        return low, high
    return (
        low if spec.range.min is None else float(spec.range.min),
        high if spec.range.max is None else float(spec.range.max),
    )


def _ascii(text: str) -> str:
    """``text`` without accents or punctuation, for an email address."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in folded if ch.isalnum())


def _simulate_roster(
    rng: np.random.Generator, scale: float, declared: Sequence[object] = ()
) -> pd.DataFrame:
    """The EPP's program records: program, cohort and licensure area per candidate.

    The programs are the agreement's public ``program_code`` values where it lists
    them (so its tables have the EPP's real catalogue), a random catalogue otherwise.
    """
    optional = rng.choice(len(_OPTIONAL_PROGRAMS), size=2, replace=False)
    small = rng.choice(len(_SMALL_PROGRAMS), size=3, replace=False)
    programs = [
        *_CORE_PROGRAMS,
        *(_OPTIONAL_PROGRAMS[i] for i in sorted(optional)),
        *(_SMALL_PROGRAMS[i] for i in sorted(small)),
    ]
    if declared:
        catalogue = (*_CORE_PROGRAMS, *_OPTIONAL_PROGRAMS, *_SMALL_PROGRAMS)
        programs = [p for p in catalogue if p.code in set(map(str, declared))]
    factor = rng.uniform(0.85, 1.25)  # some EPPs are bigger than others
    codes, fields, cohorts = [], [], []
    for program in programs:
        for cohort in COHORTS:
            if program.size:
                n = max(3, int(rng.poisson(program.size * factor * scale)))
            else:
                n = max(2, round(int(rng.integers(2, 7)) * scale))
            codes += [program.code] * n
            fields += [program.field] * n
            cohorts += [cohort] * n
    return pd.DataFrame(
        {
            "program_code": codes,
            "field": fields,
            "cohort_year": np.asarray(cohorts, dtype=np.int64),
            "licensure_area": [_FIELDS[f].licensure for f in fields],
        }
    )


def _new_people(
    rng: np.random.Generator,
    fields: Sequence[str],
    *,
    gender_p: Sequence[float],
    race_p: Sequence[float],
    birth_year: IntArray,
) -> pd.DataFrame:
    """People with names, birth dates, demographics and a latent teaching quality."""
    n = len(fields)
    gender = _pick(rng, _GENDERS, n, gender_p)
    female = (gender == "F") | ((gender != "M") & (rng.random(n) < 0.5))
    first = np.where(
        female,
        np.asarray(_FEMALE_NAMES, dtype=object)[rng.integers(0, len(_FEMALE_NAMES), n)],
        np.asarray(_MALE_NAMES, dtype=object)[rng.integers(0, len(_MALE_NAMES), n)],
    )
    last = np.asarray(_LAST_NAMES, dtype=object)[rng.integers(0, len(_LAST_NAMES), n)]
    birth = np.asarray(birth_year - 1970, dtype="datetime64[Y]").astype(
        "datetime64[D]"
    ) + rng.integers(0, 365, n).astype("timedelta64[D]")
    subjects = [str(rng.choice(_FIELDS[f].subjects)) for f in fields]
    return pd.DataFrame(
        {
            "field": list(fields),
            "subject": subjects,
            "first_name": first,
            "last_name": last,
            "birth_date": birth.astype(str),
            "gender": gender,
            "race": _pick(rng, _RACES, n, race_p),
            "quality": rng.normal(0, 1, n),
        }
    )


def _candidates(rng: np.random.Generator, roster: pd.DataFrame) -> pd.DataFrame:
    """One person per roster row; sets the roster's ``_person`` and ``completion_status``."""
    n = len(roster)
    # Most complete at 21-24; a quarter are career changers.
    age = np.where(rng.random(n) < 0.75, 21 + rng.geometric(0.55, n) - 1, rng.integers(25, 46, n))
    people = _new_people(
        rng,
        roster["field"].tolist(),
        gender_p=_CANDIDATE_GENDER,
        race_p=_CANDIDATE_RACE,
        birth_year=roster["cohort_year"].to_numpy() - age,
    )
    people["epp_gender"] = people["gender"]
    people["epp_race"] = people["race"]
    withdraw_p = people["race"].map(_WITHDRAWAL).fillna(_WITHDRAWAL_OTHERS).to_numpy()
    draw = rng.random(n)
    cohort = roster["cohort_year"].to_numpy()
    status = np.where(draw < withdraw_p, "withdrawn", "completed").astype(object)
    status[(cohort == COHORTS[-2]) & (draw >= withdraw_p) & (draw < withdraw_p + 0.05)] = (
        "in_progress"
    )
    status[cohort == COHORTS[-1]] = "in_progress"
    roster["completion_status"] = status
    roster["_person"] = np.arange(n)
    return people


def _simulate_schools(rng: np.random.Generator, scale: float, *, cooperative: bool) -> pd.DataFrame:
    """District (or member-district) codes and their schools, each with a level."""
    n_districts = 4 if cooperative else 1
    n_schools = max(3, round((8 if cooperative else 20) * max(scale, 0.15)))
    region = int(rng.integers(1, 60))
    districts = [
        f"{region:02d}-{int(county):03d}-{int(number):04d}"
        for county, number in zip(
            rng.choice(np.arange(1, 200), n_districts, replace=False),
            rng.choice(np.arange(1000, 9999), n_districts, replace=False),
            strict=True,
        )
    ]
    levels = ["ES", "MS", "HS", *_pick(rng, ("ES", "MS", "HS"), n_schools - 3, (0.55, 0.2, 0.25))]
    numbers = np.sort(rng.choice(np.arange(1, 9999), n_schools, replace=False))
    owner = [districts[i % n_districts] for i in range(n_schools)]
    return pd.DataFrame(
        {
            "district_code": owner,
            "school_code": [f"{d}-{int(k):04d}" for d, k in zip(owner, numbers, strict=True)],
            "level": levels,
        }
    )


def _leave_probability(experience: IntArray) -> FloatArray:
    return np.select(
        [experience == 0, experience < 3, experience < 10, experience < 30],
        [0.14, 0.12, 0.08, 0.05],
        0.25,  # retirement
    ).astype(np.float64)


def _ends(rng: np.random.Generator, start: IntArray, experience: IntArray) -> IntArray:
    """Last school year of each spell: leaves after a year with a probability by experience."""
    end = np.full(len(start), _SIM_YEARS[-1], dtype=np.int64)
    open_ = np.ones(len(start), dtype=bool)
    for year in _SIM_YEARS[:-1]:
        at_work = open_ & (start <= year)
        leave = at_work & (rng.random(len(start)) < _leave_probability(experience + year - start))
        end[leave] = year
        open_ &= ~leave
    return end


def _simulate_district(
    rng: np.random.Generator,
    candidates: pd.DataFrame,
    roster: pd.DataFrame,
    schools: pd.DataFrame,
    *,
    size: int,
    mix: Mapping[str, int],
    cooperative: bool,
    cap: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hire completers and other teachers, year by year; return (people, spells)."""
    people = [candidates]
    spells = []
    n_people = len(candidates)

    # Completers hired the year after they complete; special education most in demand.
    completed = roster[
        (roster["completion_status"] == "completed") & (roster["cohort_year"] + 1).isin(_SIM_YEARS)
    ]
    if cooperative:
        hire_p = completed["field"].map({"SPED": 0.7, "ECE": 0.2, "ESL": 0.2, "BIL": 0.2})
        hire_p = hire_p.fillna(0.08).to_numpy()
    else:
        hire_p = np.where(completed["field"] == "SPED", 0.68, 0.52)
    hired = completed[rng.random(len(completed)) < hire_p]
    epp_start = hired["cohort_year"].to_numpy() + 1
    spells.append(
        _spells(
            rng,
            hired["_person"].to_numpy(),
            hired["field"].tolist(),
            candidates.loc[hired["_person"], "subject"].tolist(),
            epp_start,
            np.zeros(len(hired), dtype=np.int64),
            schools,
            from_epp=True,
            cap=cap,
        )
    )

    # Student teachers placed in the district as interns in their final year; most of
    # those later hired trained here.
    final_year = roster[
        roster["cohort_year"].isin(SCHOOL_YEARS) & (roster["completion_status"] != "in_progress")
    ]
    placed_p = np.where(final_year["_person"].isin(hired["_person"]), 0.55, 0.15)
    if cooperative:
        placed_p = np.where(final_year["field"] == "SPED", placed_p, 0.0)
    interns = final_year[rng.random(len(final_year)) < placed_p]
    spells.append(
        _spells(
            rng,
            interns["_person"].to_numpy(),
            interns["field"].tolist(),
            candidates.loc[interns["_person"], "subject"].tolist(),
            interns["cohort_year"].to_numpy(),
            np.zeros(len(interns), dtype=np.int64),
            schools,
            from_epp=True,
            cap=cap,
            intern=True,
        )
    )

    fields, weights = list(mix), list(mix.values())

    def hire_others(n: int, year: int, *, incumbents: bool) -> None:
        nonlocal n_people
        chosen = [str(f) for f in _pick(rng, fields, n, weights)]
        if incumbents:
            experience = np.minimum(rng.geometric(0.085, n) - 1, min(cap, _LONGEST_CAREER))
        else:  # new hires: about half straight from a program, the rest experienced
            experience = np.where(rng.random(n) < 0.45, 0, np.minimum(rng.geometric(0.15, n), cap))
        birth_year = year - 23 - experience - rng.integers(0, 9, n)
        newcomers = _new_people(
            rng, chosen, gender_p=_WORKFORCE_GENDER, race_p=_WORKFORCE_RACE, birth_year=birth_year
        )
        newcomers.index = np.arange(n_people, n_people + n)
        people.append(newcomers)
        spells.append(
            _spells(
                rng,
                newcomers.index.to_numpy(),
                chosen,
                newcomers["subject"].tolist(),
                np.full(n, year, dtype=np.int64),
                experience.astype(np.int64),
                schools,
                from_epp=False,
                cap=cap,
            )
        )
        n_people += n

    epp_by_year = pd.Series(epp_start).value_counts()
    hire_others(max(0, size - int(epp_by_year.get(_BURN_IN, 0))), _BURN_IN, incumbents=True)
    for year in _SIM_YEARS[1:]:
        workforce = pd.concat(spells, ignore_index=True)
        workforce = workforce[workforce["position"] != "intern"]
        staying = int(((workforce["start"] < year) & (workforce["end"] >= year)).sum())
        target = size * (1.005 ** (year - _BURN_IN))
        needed = round(target - staying - int(epp_by_year.get(year, 0)) + rng.normal(0, 2))
        hire_others(max(0, needed), year, incumbents=False)

    everyone = pd.concat(people)
    # The district's own records of gender and race: usually the same as the EPP's.
    everyone["district_gender"] = np.where(
        rng.random(len(everyone)) < 0.03, "U", everyone["gender"]
    )
    everyone["district_race"] = np.where(rng.random(len(everyone)) < 0.04, "UNK", everyone["race"])
    return everyone, pd.concat(spells, ignore_index=True)


def _spells(
    rng: np.random.Generator,
    person: IntArray,
    fields: Sequence[str],
    subjects: Sequence[str],
    start: IntArray,
    experience: IntArray,
    schools: pd.DataFrame,
    *,
    from_epp: bool,
    cap: int,
    intern: bool = False,
) -> pd.DataFrame:
    """Employment spells: school, grade band, position and FTE for each hire."""
    n = len(person)
    level_of = schools["level"].to_numpy()
    school_codes = schools["school_code"].to_numpy()
    school, second, band, position, fte = [], [], [], [], []
    for name in fields:
        field = _FIELDS[name]
        allowed = np.flatnonzero(np.isin(level_of, field.levels))
        if allowed.size == 0:
            allowed = np.arange(len(school_codes))
        k = int(rng.choice(allowed))
        level = level_of[k]
        school.append(school_codes[k])
        if level == "MS":
            band.append("6-8")
        elif level == "HS":
            band.append("9-12")
        elif name == "ECE":
            band.append("PK-2")
        else:
            band.append("PK-2" if rng.random() < 0.5 else "3-5")
        draw = rng.random()
        if intern:
            position.append("intern")
        elif name == "SPED" and draw < 0.2:
            position.append("co_teacher")
        elif (name in ("SPED", "ESL", "BIL") and draw < 0.3) or draw > 0.98:
            position.append("specialist")
        elif not from_epp and draw < 0.015:
            position.append("substitute")
        else:
            position.append("teacher")
        split_p = 0.3 if name in _ITINERANT else 0.02
        others = np.delete(np.arange(len(school_codes)), k)
        if not intern and others.size and rng.random() < split_p:
            second.append(school_codes[int(rng.choice(others))])
            fte.append(0.5)
        else:
            second.append("")
            fte.append(0.5 if intern or rng.random() < 0.07 else 1.0)
    end = start.copy() if intern else _ends(rng, start, experience)
    return pd.DataFrame(
        {
            "_person": person,
            "field": list(fields),
            "licensure_area": [_FIELDS[f].licensure for f in fields],
            "subject": list(subjects),
            "start": start,
            "end": end,
            "experience": np.minimum(experience, cap),
            "school": school,
            "second_school": second,
            "grade_band": band,
            "position": position,
            "fte": np.asarray(fte, dtype=np.float64),
            "from_epp": from_epp,
        },
        index=pd.RangeIndex(n),
    )


def _state_ids(rng: np.random.Generator, n: int, schemas: Sequence[DatasetSchema]) -> list[str]:
    """Unique canonical state IDs: seven digits, a few with a letter prefix if allowed."""
    numbers = rng.choice(9_000_000, size=n, replace=False) + 1_000_000
    ids = [str(int(x)) for x in numbers]
    if all(_letters_allowed(schema) for schema in schemas):
        lettered = np.flatnonzero(rng.random(n) < _LETTER_ID_SHARE)
        prefixes = rng.choice(list(_LETTER_PREFIXES), size=lettered.size)
        for i, prefix in zip(lettered, prefixes, strict=True):
            ids[i] = f"{prefix}{ids[i]}"  # the whole number kept: still unique
    return ids


def _letters_allowed(schema: DatasetSchema) -> bool:
    column = schema.educator_id_column
    if column is None:
        return True
    return _normalisation(schema.columns[column]).is_valid("T123456")


def _normalisation(spec: ColumnSpec) -> Normalisation:
    rule = spec.normalization
    kwargs: dict[str, Any] = {}
    if rule is not None:
        kwargs.update(
            trim=rule.trim, upper=rule.upper, strip_leading_zeros=rule.strip_leading_zeros
        )
    if spec.pattern is not None:
        kwargs["pattern"] = spec.pattern
    return Normalisation(**kwargs)


# --- writing a file -----------------------------------------------------------------------


def _format_ids(
    canonical: Sequence[str], *, side: Side, rule: Normalisation, rng: np.random.Generator
) -> list[str]:
    """The IDs as ``side`` writes them, using only differences ``rule`` undoes."""
    n = len(canonical)
    kind = rng.random(n)
    out = []
    for value, draw in zip(canonical, kind, strict=True):
        raw = value
        if side == "district":
            if rule.strip_leading_zeros and raw.isdigit():
                raw = raw.zfill(_DISTRICT_ID_WIDTH)
            if rule.trim and draw < 0.03 and raw.isdigit() and len(raw) == _DISTRICT_ID_WIDTH:
                raw = f"{raw[:3]} {raw[3:6]} {raw[6:]}"  # printed in groups of three
            elif rule.trim and draw < 0.09:
                raw = raw + " " * (1 + int(draw * 100) % 3)  # fixed-width export
            elif rule.trim and draw < 0.11:
                raw = " " + raw
        else:
            if rule.upper and not raw.isdigit() and draw < 0.5:
                raw = raw.lower()
            if rule.trim and 0.5 <= draw < 0.58:
                raw = raw + " "
            elif rule.trim and 0.58 <= draw < 0.62:
                raw = " " + raw
        out.append(raw)
    bad = sum(
        1
        for raw, value in zip(out, canonical, strict=True)
        if rule.normalise(raw) != value or not rule.is_valid(rule.normalise(raw))
    )
    if bad:
        # A generator bug, not bad input: the demo must upload cleanly.
        raise ValueError(f"{bad} synthetic educator IDs do not normalise to a valid ID")
    return out


def _render(
    canonical: pd.DataFrame,
    *,
    dataset: AgreementDataset,
    schema: DatasetSchema,
    side: Side,
    world: _World,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """The file's columns: ID, direct identifiers, stored and required columns, one extra."""
    id_column = schema.educator_id_column
    stored = set(dataset.stored_fields)
    wanted = [
        name
        for name, spec in schema.columns.items()
        if name == id_column or spec.role == "direct_identifier" or name in stored or spec.required
    ]
    frame = pd.DataFrame(index=canonical.index)
    for name in wanted:
        if name == id_column:
            ids = world.people["state_id"].to_numpy()[canonical["_person"].to_numpy()]
            rule = _normalisation(schema.columns[name])
            frame[name] = _format_ids(list(ids), side=side, rule=rule, rng=rng)
        elif name in canonical.columns:
            frame[name] = canonical[name].to_numpy()
        elif schema.columns[name].required:
            raise ValueError(f"no synthetic values for required column {schema.name}.{name}")
    _check_values(frame, schema)
    # One column the agreement does not keep, so the upload receipt lists a dropped column.
    extra = next(
        (
            name
            for name, spec in schema.columns.items()
            if name not in frame.columns
            and name in canonical.columns
            and spec.role not in ("educator_id", "direct_identifier")
        ),
        None,
    )
    if extra is not None:
        frame[extra] = canonical[extra].to_numpy()
    else:
        frame["notes"] = np.asarray(_NOTES, dtype=object)[rng.integers(0, len(_NOTES), len(frame))]
    return frame.rename(columns=_party_headers(dataset)).reset_index(drop=True)


def _party_headers(dataset: AgreementDataset) -> dict[str, str]:
    """Canonical column -> the party's header for it (the first, if the map gives several)."""
    headers: dict[str, str] = {}
    for header, column in dataset.header_map.items():
        headers.setdefault(column, header)
    return headers


def _check_values(frame: pd.DataFrame, schema: DatasetSchema) -> None:
    """Codes and ranges: a generator bug must not reach the demo as a refused upload."""
    for name in frame.columns:
        spec = schema.columns[name]
        values = frame[name]
        if spec.codes:
            allowed = set(spec.code_values)
            unknown = set(values.unique()) - allowed
            if unknown:
                raise ValueError(f"synthetic {schema.name}.{name} has codes {sorted(unknown)}")
        if spec.range is not None:
            low, high = _bounds(spec, -np.inf, np.inf)
            if ((values < low) | (values > high)).any():
                raise ValueError(f"synthetic {schema.name}.{name} leaves its range")


def _typed(
    frame: pd.DataFrame, *, dataset: AgreementDataset, schema: DatasetSchema
) -> pd.DataFrame:
    """``number`` columns as doubles, as a typed (Parquet) export from a statistics package has."""
    header_of = _party_headers(dataset)
    numbers = {
        header_of.get(name, name): "float64"
        for name, spec in schema.columns.items()
        if spec.type == "number" and header_of.get(name, name) in frame.columns
    }
    return frame.astype(numbers)


def _write(frame: pd.DataFrame, path: Path, fmt: FileFormat, *, sheet: str) -> Path:
    if fmt == "xlsx":
        frame.to_excel(path, index=False, sheet_name=sheet[:31], engine="openpyxl")
    elif fmt == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False, encoding="utf-8", lineterminator="\n")
    return path


# --- a large evaluations file for the upload benchmark ----------------------------------------

# fmt: off
_BENCH_COLUMNS: Final = (
    "educator_id", "first_name", "last_name", "birth_date", "school_year", "district_code",
    "school_code", "assignment_subject", "grade_band", "years_experience", "summative_rating",
    "gender", "race_ethnicity",
)
# fmt: on
_BENCH_YEARS: Final = 5  # rows per teacher: one per school year
_BENCH_CHUNK: Final = 100_000  # a multiple of _BENCH_YEARS: a teacher never straddles chunks
_BENCH_DISTRICT: Final = "07-016-1180"
_BENCH_INTEGERS: Final = frozenset({"school_year", "years_experience", "summative_rating"})


def write_evaluations_csv(path: Path, *, rows: int, seed: int = 0) -> Path:
    """Write a large evaluations CSV (canonical headers, names and birth dates included).

    One row per teacher and school year (2021 to 2025), so ``(educator_id,
    school_year)`` is unique. Written in chunks of 100,000 rows with pyarrow's CSV
    writer: a million rows take a few seconds and little memory.
    """
    if rows < 0:
        raise ValueError(f"rows must be at least 0, got {rows}")
    rng = _rng(seed, "evaluations-benchmark")
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema(
        [(name, pa.int64() if name in _BENCH_INTEGERS else pa.string()) for name in _BENCH_COLUMNS]
    )
    # No value holds a comma, quote or line break, so nothing needs quoting.
    options = pa_csv.WriteOptions(quoting_style="none", quoting_header="none")
    with pa_csv.CSVWriter(str(path), schema, write_options=options) as writer:
        for start in range(0, rows, _BENCH_CHUNK):
            stop = min(rows, start + _BENCH_CHUNK)
            writer.write_table(_bench_chunk(rng, start, stop, schema))
    return path


_BENCH_SUBJECTS: Final = ("ELEM", "ELA", "MATH", "SCI", "SS", "SPED", "ESL", "ARTS", "PE")
_BENCH_SUBJECT_P: Final = (0.34, 0.1, 0.1, 0.08, 0.07, 0.14, 0.05, 0.06, 0.06)


def _bench_chunk(rng: np.random.Generator, start: int, stop: int, schema: pa.Schema) -> pa.Table:
    row = np.arange(start, stop, dtype=np.int64)
    teacher = row // _BENCH_YEARS
    first_teacher = start // _BENCH_YEARS
    n_teachers = int(teacher[-1] - first_teacher + 1)
    local = teacher - first_teacher

    # Per teacher: a bijection of the teacher number onto eight-digit IDs (7919 is prime
    # and coprime with 9e7), so IDs are unique without a set of those already drawn.
    number = (np.arange(first_teacher, first_teacher + n_teachers) * 7919 + 1_234_567) % (
        90_000_000
    ) + 10_000_000
    gender = _pick(rng, _GENDERS, n_teachers, _WORKFORCE_GENDER)
    female = gender == "F"
    first = np.where(
        female,
        np.asarray(_FEMALE_NAMES, dtype=object)[rng.integers(0, len(_FEMALE_NAMES), n_teachers)],
        np.asarray(_MALE_NAMES, dtype=object)[rng.integers(0, len(_MALE_NAMES), n_teachers)],
    )
    last = np.asarray(_LAST_NAMES, dtype=object)[rng.integers(0, len(_LAST_NAMES), n_teachers)]
    experience = np.minimum(rng.geometric(0.085, n_teachers) - 1, _LONGEST_CAREER)
    birth = np.asarray(
        1997 - experience - rng.integers(0, 9, n_teachers) - 1970, dtype="datetime64[Y]"
    ).astype("datetime64[D]") + rng.integers(0, 365, n_teachers).astype("timedelta64[D]")
    subject = _pick(rng, _BENCH_SUBJECTS, n_teachers, _BENCH_SUBJECT_P)
    level = rng.integers(0, 3, n_teachers)
    band = np.where(
        subject == "ELEM",
        np.where(rng.random(n_teachers) < 0.5, "PK-2", "3-5"),
        np.asarray(["3-5", "6-8", "9-12"])[level],
    )
    school = rng.integers(1, 61, n_teachers)
    quality = rng.normal(0, 1, n_teachers)
    race = _pick(rng, _RACES, n_teachers, _WORKFORCE_RACE)

    # Per row.
    year_index = row % _BENCH_YEARS
    latent = quality[local] + rng.normal(0, 0.6, len(row))
    ids = pc.utf8_lpad(pa.array(number[local]).cast(pa.string()), _DISTRICT_ID_WIDTH, "0")
    padded = pc.utf8_rpad(ids, _DISTRICT_ID_WIDTH + 2, " ")
    ids = pc.if_else(pa.array(rng.random(len(row)) < 0.05), padded, ids)
    school_codes = np.char.add(f"{_BENCH_DISTRICT}-", np.char.zfill(school.astype(str), 4))
    columns = {
        "educator_id": ids,
        "first_name": pa.array(first[local], type=pa.string()),
        "last_name": pa.array(last[local], type=pa.string()),
        "birth_date": pa.array(birth[local].astype(str), type=pa.string()),
        "school_year": pa.array(SCHOOL_YEARS[0] + year_index),
        "district_code": pa.array(np.full(len(row), _BENCH_DISTRICT), type=pa.string()),
        "school_code": pa.array(school_codes[local], type=pa.string()),
        "assignment_subject": pa.array(subject[local], type=pa.string()),
        "grade_band": pa.array(band[local], type=pa.string()),
        "years_experience": pa.array(np.minimum(experience[local] + year_index, 50)),
        "summative_rating": pa.array(_ordinal(latent, _RATING_CUTS)),
        "gender": pa.array(gender[local], type=pa.string()),
        "race_ethnicity": pa.array(race[local], type=pa.string()),
    }
    return pa.Table.from_pydict(columns, schema=schema)
