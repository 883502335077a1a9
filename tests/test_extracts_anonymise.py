"""Generalisation and suppression of an extract's quasi-identifiers (gateway/extracts/
anonymise.py), judged by pycanon's own k-anonymity and l-diversity, never by the
module's counting."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycanon import anonymity

from gateway.agreements.models import Hierarchy, HierarchyLevel
from gateway.extracts.anonymise import Ladder, anonymise, ladder

EXPERIENCE = Hierarchy(
    levels=[
        HierarchyLevel(
            name="experience band",
            groups={
                "0 to 2 years": [0, 1, 2],
                "3 to 5 years": [3, 4, 5],
                "6 to 10 years": list(range(6, 11)),
                "11 years or more": list(range(11, 51)),
            },
        ),
        HierarchyLevel(
            name="career stage",
            groups={"early career": list(range(6)), "experienced": list(range(6, 51))},
        ),
    ],
    top="all experience",
)
SCHOOL_LEVEL = Hierarchy(
    levels=[
        HierarchyLevel(
            name="school level",
            groups={"elementary": ["PK-2", "3-5"], "secondary": ["6-8", "9-12"]},
        )
    ],
    top="all grades",
)
YEARS = Hierarchy(levels=[HierarchyLevel(name="3-year window", pool=3)], top="all years")


def ladders() -> dict[str, Ladder]:
    return {
        "years_experience": ladder(EXPERIENCE, last_year=2025),
        "grade_band": ladder(SCHOOL_LEVEL, last_year=2025),
        "school_year": ladder(YEARS, last_year=2025),
    }


QIS = ["years_experience", "grade_band", "school_year"]


def pycanon_k(frame: pd.DataFrame, qis: list[str]) -> int:
    """k in distinct teachers, as pycanon counts it over one row per teacher and class."""
    people = frame[["teacher_id", *qis]].astype(str).drop_duplicates().reset_index(drop=True)
    return int(anonymity.k_anonymity(people, qis))


def pycanon_l(frame: pd.DataFrame, qis: list[str], sensitive: list[str]) -> int:
    return int(anonymity.l_diversity(frame.astype(str).reset_index(drop=True), qis, sensitive))


def with_trajectories(frame: pd.DataFrame, qis: list[str]) -> pd.DataFrame:
    """The rows with each teacher's trajectory: the set of combinations of quasi-
    identifiers the teacher has rows with (what someone who knows the teacher's years
    can look for, since the rows share one teacher ID)."""
    text = frame.astype(str)
    combination = text[qis].agg("|".join, axis=1)
    trajectory = combination.groupby(text["teacher_id"]).agg(lambda c: "/".join(sorted(set(c))))
    return text.assign(trajectory=text["teacher_id"].map(trajectory)).reset_index(drop=True)


def pycanon_linked(frame: pd.DataFrame, qis: list[str], sensitive: list[str]) -> tuple[int, int]:
    """k (in teachers) and l over classes of one trajectory and one combination."""
    linked = with_trajectories(frame, qis)
    columns = ["trajectory", *qis]
    return pycanon_k(linked, columns), pycanon_l(linked, columns, sensitive)


def small_partnership(seed: int = 7) -> pd.DataFrame:
    """Sixty completers over three years, as a small EPP-district partnership has them:
    varied experience and grade bands, a few rare ones, mostly proficient ratings."""
    rng = np.random.default_rng(seed)
    rows = []
    for teacher in range(60):
        experience = int(
            rng.choice([0, 1, 2, 3, 4, 7, 12, 25], p=[0.2, 0.2, 0.15, 0.15, 0.1, 0.1, 0.07, 0.03])
        )
        band = str(rng.choice(["PK-2", "3-5", "6-8", "9-12"], p=[0.35, 0.3, 0.2, 0.15]))
        for year in (2023, 2024, 2025):
            if rng.random() < 0.8:
                rows.append(
                    {
                        "teacher_id": f"teacher-{teacher}",
                        "years_experience": min(experience + year - 2023, 50),
                        "grade_band": band,
                        "school_year": year,
                        "summative_rating": int(rng.choice([1, 2, 3, 4], p=[0.05, 0.15, 0.6, 0.2])),
                    }
                )
    return pd.DataFrame(rows)


def test_purpose_made_data_fails_k_and_l_until_generalised_and_passes_after() -> None:
    frame = small_partnership()
    k, l = 5, 2  # noqa: E741
    # As recorded, pycanon finds classes of one teacher and classes with one rating.
    assert pycanon_k(frame, QIS) < k
    assert pycanon_l(frame, QIS, ["summative_rating"]) < l

    result = anonymise(
        frame,
        quasi_identifiers=ladders(),
        sensitive=["summative_rating"],
        person="teacher_id",
        k=k,
        l=l,
        max_suppressed=0.1,
    )
    released = result.frame
    assert len(released) > 0
    assert pycanon_k(released, QIS) >= k
    assert pycanon_l(released, QIS, ["summative_rating"]) >= l
    # A teacher's rows share an ID: each trajectory too is shared by k teachers and
    # shows l ratings in each of its rows; pycanon measures what the result reports.
    assert pycanon_linked(released, QIS, ["summative_rating"]) == (
        result.k_achieved,
        result.l_achieved,
    )
    assert result.k_achieved is not None and result.k_achieved >= k
    assert result.l_achieved is not None and result.l_achieved >= l
    # The information lost, as reported, is what the file shows.
    assert result.suppressed_share <= 0.1
    assert (
        result.rows_released == len(released) == round(len(frame) * (1 - result.suppressed_share))
    )
    for column in result.generalisation:
        steps = ladders()[column.column]
        assert column.level_name == steps.names[column.level]
        assert set(released[column.column]) <= {
            steps.label(value, column.level) for value in frame[column.column]
        }
    assert any(column.level > 0 for column in result.generalisation)
    assert any(column.level < column.levels - 1 for column in result.generalisation)
    # Risk: records unique on the quasi-identifiers before, none after; the prosecutor
    # rate (classes / records) falls to at most 1/k of a teacher's rows.
    assert result.risk_before.unique_share > 0
    assert result.risk_after.unique_share == 0
    assert result.risk_after.max_risk <= 1 / k
    assert result.risk_after.prosecutor_rate < result.risk_before.prosecutor_rate
    classes = released.groupby(QIS).ngroups
    assert result.risk_after.classes == classes
    assert result.risk_after.prosecutor_rate == classes / len(released)


def test_the_least_generalisation_is_chosen() -> None:
    """No node one level finer in any column would have done (checked with pycanon on
    that node's rows after suppressing its failing classes), with classes of rows
    (``linked=False``), where that is simple to recount."""
    frame = small_partnership(seed=3)
    result = anonymise(
        frame,
        quasi_identifiers=ladders(),
        sensitive=["summative_rating"],
        person="teacher_id",
        k=4,
        l=2,
        max_suppressed=0.05,
        linked=False,
    )
    steps = ladders()
    for index, chosen in enumerate(result.node):
        if chosen == 0:
            continue
        finer = list(result.node)
        finer[index] -= 1
        shown = frame.copy()
        for qi, level in zip(QIS, finer, strict=True):
            shown[qi] = [steps[qi].label(value, level) for value in frame[qi]]
        teachers = shown.groupby(QIS)["teacher_id"].transform("nunique")
        ratings = shown.groupby(QIS)["summative_rating"].transform("nunique")
        kept = shown[(teachers >= 4) & (ratings >= 2)]
        # Either too much would be suppressed, or what is left fails pycanon's check.
        assert len(frame) - len(kept) > 0.05 * len(frame) or (
            len(kept) > 0
            and (pycanon_k(kept, QIS) < 4 or pycanon_l(kept, QIS, ["summative_rating"]) < 2)
        )


def test_too_few_teachers_releases_nothing() -> None:
    frame = small_partnership().query("teacher_id in ['teacher-1', 'teacher-2']")
    result = anonymise(
        frame.reset_index(drop=True),
        quasi_identifiers=ladders(),
        sensitive=["summative_rating"],
        person="teacher_id",
        k=5,
        l=2,
        max_suppressed=0.1,
    )
    assert result.frame.empty and result.suppressed_share == 1.0
    assert result.k_achieved is None


@st.composite
def random_extracts(draw: st.DrawFn) -> tuple[pd.DataFrame, int, int, float]:
    teachers = draw(st.integers(min_value=1, max_value=30))
    rows = []
    for teacher in range(teachers):
        for _ in range(draw(st.integers(min_value=1, max_value=3))):
            rows.append(
                {
                    "teacher_id": f"t{teacher}",
                    "years_experience": draw(
                        st.one_of(st.none(), st.integers(min_value=0, max_value=50))
                    ),
                    "grade_band": draw(st.sampled_from(["PK-2", "3-5", "6-8", "9-12"])),
                    "school_year": draw(st.integers(min_value=2019, max_value=2025)),
                    "summative_rating": draw(st.sampled_from([1, 2, 3, 4])),
                }
            )
    k = draw(st.integers(min_value=3, max_value=8))
    l = draw(st.integers(min_value=1, max_value=3))  # noqa: E741
    share = draw(st.sampled_from([0.0, 0.05, 0.2, 0.5]))
    return pd.DataFrame(rows), k, l, share


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_extracts())
def test_the_output_is_always_k_anonymous_and_l_diverse_or_empty(
    case: tuple[pd.DataFrame, int, int, float],
) -> None:
    frame, k, l, share = case  # noqa: E741
    result = anonymise(
        frame,
        quasi_identifiers=ladders(),
        sensitive=["summative_rating"],
        person="teacher_id",
        k=k,
        l=l,
        max_suppressed=share,
    )
    released = result.frame
    if released.empty:
        # Nothing is released only when even one class of everybody fails.
        assert frame["teacher_id"].nunique() < k or frame["summative_rating"].nunique() < l
        return
    assert pycanon_k(released, QIS) >= k
    assert pycanon_l(released, QIS, ["summative_rating"]) >= l
    linked_k, linked_l = pycanon_linked(released, QIS, ["summative_rating"])
    assert linked_k >= k and linked_l >= l
    assert len(frame) - len(released) <= share * len(frame) + 1e-9
    assert "teacher_id" in released and set(released["teacher_id"]) <= set(frame["teacher_id"])


def test_classes_of_rows_alone_leave_trajectories_that_single_teachers_out() -> None:
    """Why classes follow trajectories: k-anonymous rows of the purpose-made data still
    let someone who knows a teacher's years find fewer than k teachers with that history;
    the default (linked) result does not."""
    frame = small_partnership()
    options = {
        "quasi_identifiers": ladders(),
        "sensitive": ["summative_rating"],
        "person": "teacher_id",
        "k": 5,
        "l": 2,
        "max_suppressed": 0.1,
    }
    rows_only = anonymise(frame, linked=False, **options).frame  # type: ignore[arg-type]
    assert pycanon_k(rows_only, QIS) >= 5
    assert pycanon_linked(rows_only, QIS, ["summative_rating"])[0] < 5
    linked = anonymise(frame, **options).frame  # type: ignore[arg-type]
    assert pycanon_linked(linked, QIS, ["summative_rating"])[0] >= 5


def test_a_keyed_choice_among_equally_good_generalisations() -> None:
    """Two symmetric quasi-identifiers: generalising either one is as good as the other;
    the tie-break key picks one (recorded as the fingerprint's node), the same every
    time for one key, and different keys pick both."""
    rows = [
        {"teacher_id": f"t{i}", "a": i % 2, "b": (i // 2) % 2, "summative_rating": 2 + i % 3}
        for i in range(24)
    ]
    # Cells (a, b) of 5, 5, 4 and 4 teachers: below k = 5 as recorded; either column
    # generalised alone leaves classes of 9 and 9, or of 10 and 8.
    frame = pd.DataFrame(rows[:18]).reset_index(drop=True)
    options = {
        "quasi_identifiers": {"a": ladder(None, last_year=2025), "b": ladder(None, last_year=2025)},
        "sensitive": ["summative_rating"],
        "person": "teacher_id",
        "k": 5,
        "l": 2,
        "max_suppressed": 0.0,
    }
    untied = anonymise(frame, **options)  # type: ignore[arg-type]
    assert untied.tied_nodes == 2 and sum(untied.node) == 1

    def keyed(key: bytes) -> tuple[int, ...]:
        return anonymise(
            frame,
            tie_break=lambda node: hashlib.sha256(key + bytes(node)).digest(),
            **options,  # type: ignore[arg-type]
        ).node

    chosen = {keyed(bytes([key])) for key in range(12)}
    assert chosen == {(1, 0), (0, 1)}
    assert keyed(b"same") == keyed(b"same")
