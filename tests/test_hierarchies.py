"""Hierarchies: how a dimension coarsens, declared by a schema or by an agreement.

Every rule of gateway/agreements/hierarchy_checks.py is refused with one finding
naming the file, line and YAML path; the shipped policies and agreements pass and
coarsen as their comments say; and, for random hierarchies, the checker accepts
exactly those that give every code one parent per level with parents nesting.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.agreements import (
    ColumnSpec,
    Hierarchy,
    HierarchyLevel,
    Problem,
    check_agreements,
    load_registry,
)
from gateway.agreements.hierarchy_checks import check_hierarchy
from gateway.errors import NotFound

ROOT = Path(__file__).resolve().parent.parent
AGREEMENTS = ROOT / "agreements"
POLICIES = ROOT / "policies"
DIVERSITY = AGREEMENTS / "diversity-cedar-valley-harmon.yaml"
CALIBRATION = AGREEMENTS / "calibration-lakeshore-riverbend.yaml"


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """A private copy of policies/ to break."""
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


def line_of(path: Path, text: str, *, after: str | None = None) -> int:
    """The 1-based line where ``text`` first appears (after the line holding ``after``)."""
    lines = path.read_text().splitlines()
    start = 0
    if after is not None:
        start = next(i for i, line in enumerate(lines) if after in line)
    return next(i for i, line in enumerate(lines) if i >= start and text in line) + 1


def only_problem(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


def variant(folder: Path, source: Path, *replacements: tuple[str, str]) -> Path:
    """A copy of an example agreement (same id, so the file keeps its name) with each
    (old, new) text replaced once."""
    text = source.read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = folder / source.name
    path.write_text(text)
    return path


# --- the shipped policies and agreements ----------------------------------------------------


def test_shipped_policies_and_agreements_pass_and_coarsen_as_declared() -> None:
    registry, problems = check_agreements(AGREEMENTS, POLICIES)
    assert problems == []
    ratings = registry.schemas["evaluations"].columns["summative_rating"].hierarchy
    assert ratings is not None
    assert ratings.level_names == ("rating band", "all ratings")
    assert ratings.groups("rating band") == {
        "below proficient": [1, 2],
        "proficient": [3],
        "exemplary": [4],
    }
    assert [ratings.parent(rating, 0) for rating in (1, 2, 3, 4)] == [
        "below proficient",
        "below proficient",
        "proficient",
        "exemplary",
    ]
    scores = registry.schemas["observations"].columns["score"].hierarchy
    assert scores is not None
    assert scores.groups(0)["below proficient"] == [1, 2]

    # Every schema with years pools them the same way, so a plain school_year has one parent.
    for schema in registry.schemas.values():
        for name in ("school_year", "cohort_year"):
            if name in schema.columns:
                years = schema.columns[name].hierarchy
                assert years is not None, f"{schema.name}.{name}"
                assert [level.pool for level in years.levels] == [3]
                assert years.parents(2025)[0] == "2023\u20132025"


def test_each_agreement_coarsens_its_own_values() -> None:
    registry = load_registry(AGREEMENTS, POLICIES)
    for agreement in registry.agreements.values():
        programs = agreement.field_hierarchy("program_code")
        assert programs is not None, agreement.id
        # The agreement's program areas hold exactly its public programs.
        listed = [code for codes in programs.groups("program area").values() for code in codes]
        assert sorted(map(str, listed)) == sorted(map(str, agreement.public_values["program_code"]))
        for program in agreement.public_values["program_code"]:
            assert programs.parents(program)[-1] == "all programs"
        for dataset in agreement.datasets:
            if "school_year" in dataset.stored_fields:
                years = agreement.hierarchy(dataset.name, "school_year")
                assert years is not None
                assert years.parent(2024, "3-year window") == "2022\u20132024"

    bayview = registry.agreement("student-teaching-bayview-eastport")
    assert bayview.hierarchy("completers", "program_code") is not None
    assert bayview.field_hierarchy("completers.program_code") == bayview.hierarchy(
        "completers", "program_code"
    )
    sped = registry.agreement("sped-pipeline-northfield-tricounty").field_hierarchy("program_code")
    assert sped is not None
    assert sped.groups("program area")["arts, languages and other"] == ["PEH", "CTE", "WL"]
    assert "school_code" not in bayview.hierarchies.get("evaluations", {})
    with pytest.raises(NotFound):
        bayview.hierarchy("vacancies", "school_year")


def test_the_diversity_agreement_groups_race_and_ethnicity() -> None:
    registry = load_registry(AGREEMENTS, POLICIES)
    diversity = registry.agreement("diversity-cedar-valley-harmon")
    for dataset in ("completers", "evaluations"):
        races = diversity.hierarchy(dataset, "race_ethnicity")
        assert races is not None
        assert races.parents("BLACK") == ("teachers of colour", "all races and ethnicities")
        assert races.parent("WHITE", "partnership grouping") == "white"
        assert races.parent("UNK", 0) == "not reported"
    assert diversity.field_hierarchy("race_ethnicity") == diversity.hierarchy(
        "completers", "race_ethnicity"
    )
    # The schemas leave race/ethnicity to the agreements.
    assert registry.schemas["completers"].columns["race_ethnicity"].hierarchy is None
    assert diversity.field_hierarchy("gender") is None


def test_hierarchy_lookups() -> None:
    ratings = Hierarchy(
        levels=[
            HierarchyLevel(
                name="band", groups={"low": [1, 2], "proficient": [3], "exemplary": [4]}
            ),
            HierarchyLevel(name="two bands", groups={"below": [1, 2], "at or above": [3, 4]}),
        ],
        top="all ratings",
    )
    assert ratings.level_index("two bands") == 1
    assert ratings.level_index(2) == 2
    assert ratings.parents(3) == ("proficient", "at or above", "all ratings")
    assert ratings.groups("all ratings") == {"all ratings": [1, 2, 3, 4]}
    assert ratings.groups(1, [4, 1]) == {"below": [1], "at or above": [4]}
    assert ratings.codes == (1, 2, 3, 4)
    with pytest.raises(NotFound, match="no level 'decile'"):
        ratings.level_index("decile")
    with pytest.raises(NotFound, match="no level 3"):
        ratings.parent(1, 3)
    with pytest.raises(NotFound, match="5 is in no group of level 'band'"):
        ratings.parent(5, 0)
    with pytest.raises(NotFound):
        ratings.parent(True, 0)  # True is not the code 1

    restricted = ratings.restricted_to([1, 4])
    assert restricted.groups(0) == {"low": [1], "exemplary": [4]}
    assert restricted.parents(4) == ratings.parents(4)

    years = Hierarchy(
        levels=[HierarchyLevel(name="3 years", pool=3), HierarchyLevel(name="5 years", pool=5)],
        top="all years",
    )
    assert years.pooled
    assert years.parents(2025) == ("2023\u20132025", "2021\u20132025", "all years")
    assert years.groups("3 years", [2025, 2024]) == {
        "2022\u20132024": [2022, 2023, 2024],
        "2023\u20132025": [2023, 2024, 2025],
    }
    assert years.groups("all years", [2024, 2025]) == {"all years": [2024, 2025]}
    # Years read from a table are often numpy integers.
    assert years.parent(numpy.int64(2025), "5 years") == "2021\u20132025"
    assert Hierarchy(levels=[HierarchyLevel(name="1 year", pool=1)]).parent(2025, 0) == "2025"
    with pytest.raises(ValueError, match="pools years"):
        years.groups(0)
    with pytest.raises(NotFound, match="not a year"):
        years.parent("2025", 0)
    with pytest.raises(ValueError, match="either groups"):
        HierarchyLevel(name="both", pool=3, groups={"a": [1]})


# --- each rule, refused in a schema ----------------------------------------------------------

RATING_BANDS = """            below proficient: [1, 2]
            proficient: [3]
            exemplary: [4]
"""

# (file, old, new, YAML path, reason, text on the line reported, searched after this text)
SCHEMA_RULES = [
    pytest.param(
        "evaluations.yaml",
        "below proficient: [1, 2]",
        "below proficient: [1]",
        "columns.summative_rating.hierarchy.levels[0].groups",
        "code 2 is in no group of level 'rating band'",
        "groups:",
        "summative_rating:",
        id="code-missing",
    ),
    pytest.param(
        "evaluations.yaml",
        "proficient: [3]\n",
        "proficient: [3, 2]\n",
        "columns.summative_rating.hierarchy.levels[0].groups.proficient[1]",
        "code 2 is already in group 'below proficient': each code is in one group per level",
        "proficient: [3, 2]",
        None,
        id="code-twice",
    ),
    pytest.param(
        "evaluations.yaml",
        "exemplary: [4]\n",
        "exemplary: [4, 4]\n",
        "columns.summative_rating.hierarchy.levels[0].groups.exemplary[1]",
        "code 4 is already earlier in this group",
        "exemplary: [4, 4]",
        None,
        id="code-twice-in-one-group",
    ),
    pytest.param(
        "evaluations.yaml",
        "exemplary: [4]\n",
        "exemplary: [4, 5]\n",
        "columns.summative_rating.hierarchy.levels[0].groups.exemplary[1]",
        "5 is not one of the codes of 'summative_rating'",
        "exemplary: [4, 5]",
        None,
        id="unknown-code",
    ),
    pytest.param(
        "evaluations.yaml",
        "exemplary: [4]\n",
        'exemplary: [4, "4"]\n',
        "columns.summative_rating.hierarchy.levels[0].groups.exemplary[1]",
        "code '4' is not an integer (the type of 'summative_rating')",
        'exemplary: [4, "4"]',
        None,
        id="code-of-another-type",
    ),
    pytest.param(
        "completers.yaml",
        "special education: [SPED]\n            arts,",
        "special education: [SPED, sped]\n            arts,",
        'columns.program_code.hierarchy.levels[0].groups["special education"][1]',
        "code 'sped' does not match the pattern of 'program_code'",
        "special education: [SPED, sped]",
        None,
        id="code-against-pattern",
    ),
    pytest.param(
        "completers.yaml",
        "      top: all programs\n",
        "        - name: program family\n          groups:\n"
        "            general: [ECE, ELEM, MIDGR, SECELA, SECMATH, SECSCI, SECSS]\n"
        "            special and other: [SPED, ARTED, MUSED, PEH, CTE, WL, ESL]\n"
        "      top: all programs\n",
        "columns.program_code.hierarchy.levels[1].groups",
        "code 'BILED' is in no group of level 'program family'",
        "groups:",
        "name: program family",
        id="uncoded-column-later-level-misses-a-code",
    ),
    pytest.param(
        "evaluations.yaml",
        "      top: all ratings\n",
        "        - name: two bands\n          groups: {low: [1], high: [2, 3, 4]}\n"
        "      top: all ratings\n",
        "columns.summative_rating.hierarchy.levels[1].groups.high",
        "level 'two bands' splits group 'below proficient' of level 'rating band' between "
        "'low' and 'high': each group must lie within one group of the next level",
        "groups: {low: [1], high: [2, 3, 4]}",
        None,
        id="levels-do-not-nest",
    ),
    pytest.param(
        "evaluations.yaml",
        "            proficient: [3]\n",
        "            Below Proficient : [3]\n",
        'columns.summative_rating.hierarchy.levels[0].groups["Below Proficient"]',
        "label 'Below Proficient' repeats 'below proficient' in this level",
        "Below Proficient : [3]",
        None,
        id="label-repeats",
    ),
    pytest.param(
        "evaluations.yaml",
        "      top: all ratings\n",
        "      top: Rating Band\n",
        "columns.summative_rating.hierarchy.top",
        "level name 'Rating Band' repeats 'rating band'",
        "top: Rating Band",
        None,
        id="level-name-repeats",
    ),
    pytest.param(
        "evaluations.yaml",
        RATING_BANDS,
        "            below proficient: [1, 3]\n            proficient: [2]\n"
        "            exemplary: [4]\n",
        'columns.summative_rating.hierarchy.levels[0].groups["below proficient"]',
        "1 and 3 are not adjacent (2 lies between them): on an ordinal column each group is "
        "a run of adjacent codes",
        "below proficient: [1, 3]",
        None,
        id="ordinal-group-not-a-run",
    ),
    pytest.param(
        "evaluations.yaml",
        "            exemplary: [4]\n",
        "            exemplary: []\n            top band: [4]\n",
        "columns.summative_rating.hierarchy.levels[0].groups.exemplary",
        "group 'exemplary' lists no codes",
        "exemplary: []",
        None,
        id="group-without-codes",
    ),
    pytest.param(
        "staffing.yaml",
        "        - {name: 3-year window, pool: 3}\n",
        "        - {name: 3-year window, pool: 0}\n",
        "columns.school_year.hierarchy.levels[0].pool",
        "pool must be a whole number of years, at least 1, got 0",
        "pool: 0",
        None,
        id="pool-not-positive",
    ),
    pytest.param(
        "staffing.yaml",
        "        - {name: 3-year window, pool: 3}\n",
        "        - {name: 3-year window, pool: 2.5}\n",
        "columns.school_year.hierarchy.levels[0].pool",
        "input should be a valid integer, got 2.5",
        "pool: 2.5",
        None,
        id="pool-not-whole",
    ),
    pytest.param(
        "staffing.yaml",
        "        - {name: 3-year window, pool: 3}\n",
        "        - {name: 3-year window, pool: 3}\n        - {name: pairs, pool: 2}\n",
        "columns.school_year.hierarchy.levels[1].pool",
        "a pool of 2 years gives narrower windows than level '3-year window' (3 years): "
        "each level must be coarser than the one before",
        "{name: pairs, pool: 2}",
        None,
        id="pools-narrow",
    ),
    pytest.param(
        "staffing.yaml",
        "        - {name: 3-year window, pool: 3}\n",
        "        - {name: 3-year window, pool: 3, groups: {recent: [2025]}}\n",
        "columns.school_year.hierarchy.levels[0]",
        "a level has either groups (label: [codes]) or a pool (a window of years), not both",
        "{name: 3-year window, pool: 3, groups",
        None,
        id="pool-and-groups",
    ),
    pytest.param(
        "staffing.yaml",
        "        - {name: 3-year window, pool: 3}\n",
        "        - {name: 3-year window, pool: 3}\n"
        "        - {name: recent, groups: {recent: [2024, 2025]}}\n",
        "columns.school_year.hierarchy.levels[1]",
        "a hierarchy either groups codes at every level or pools years at every level",
        "{name: recent, groups",
        None,
        id="pools-and-groups-mixed",
    ),
    pytest.param(
        "evaluations.yaml",
        "    description: Grade band of the educator's main assignment.\n",
        "    description: Grade band of the educator's main assignment.\n"
        "    hierarchy: {levels: [{name: pairs, pool: 2}]}\n",
        "columns.grade_band.hierarchy.levels",
        "only an integer column of years is pooled; 'grade_band' is a string column",
        "hierarchy: {levels: [{name: pairs, pool: 2}]}",
        None,
        id="pool-on-a-string-column",
    ),
    pytest.param(
        "evaluations.yaml",
        "    range: {min: 0, max: 50}\n",
        "    range: {min: 0}\n    hierarchy: {levels: [{name: pairs, pool: 2}]}\n",
        "columns.years_experience.hierarchy.levels",
        "pooling years needs the column's range of years (min and max)",
        "hierarchy: {levels: [{name: pairs, pool: 2}]}",
        None,
        id="pool-without-a-range",
    ),
    pytest.param(
        "staffing.yaml",
        "    description: Full-time equivalent of the position (1 = full time).\n",
        "    description: Full-time equivalent of the position (1 = full time).\n"
        "    hierarchy: {levels: [{name: halves, groups: {part: [half]}}]}\n",
        "columns.fte.hierarchy",
        "'fte' is a number column: only string, integer and boolean columns coarsen",
        "hierarchy: {levels: [{name: halves",
        None,
        id="number-column",
    ),
    pytest.param(
        "staffing.yaml",
        "    description: Educator's first name; recognised at upload only to be dropped.\n",
        "    description: Educator's first name; recognised at upload only to be dropped.\n"
        "    hierarchy: {levels: [{name: initial, groups: {a: [Ann]}}]}\n",
        "columns.first_name.hierarchy",
        "'first_name' is a direct identifier: it is never released, so never coarsened",
        "hierarchy: {levels: [{name: initial",
        None,
        id="direct-identifier",
    ),
]


@pytest.mark.parametrize(
    ("file", "old", "new", "path", "reason", "line_text", "after"), SCHEMA_RULES
)
def test_each_schema_rule_is_refused_with_file_line_and_path(
    policies: Path,
    file: str,
    old: str,
    new: str,
    path: str,
    reason: str,
    line_text: str,
    after: str | None,
) -> None:
    target = policies / "datasets" / file
    edit(target, old, new)
    registry, problems = check_agreements(AGREEMENTS, policies)
    problem = only_problem([p for p in problems if p.file == str(target)])
    assert problem.path == path
    assert reason in problem.reason, problem.reason
    assert problem.line == line_of(target, line_text, after=after)
    # Agreements using the schema are refused too, pointing at it.
    assert Path(file).stem not in registry.schemas
    assert any("has problems of its own" in p.reason for p in problems if p.file != str(target))


def test_a_bad_code_of_the_column_is_one_problem(policies: Path) -> None:
    """The hierarchy is checked once the column's codes are valid."""
    target = policies / "datasets" / "evaluations.yaml"
    edit(target, "      - {value: 4, label: exemplary}", '      - {value: "4", label: exemplary}')
    _, problems = check_agreements(AGREEMENTS, policies)
    problem = only_problem([p for p in problems if p.file == str(target)])
    assert problem.path == "columns.summative_rating.codes[3]"


# --- each rule, refused in an agreement -------------------------------------------------------

GROUPING = """groupings:
  race_ethnicity:
    levels:
      - name: partnership grouping
        groups:
          teachers of colour: [HISP, AIAN, ASIAN, BLACK, NHPI, MULTI]
          white: [WHITE]
          not reported: [UNK]
    top: all races and ethnicities
"""


@pytest.mark.parametrize(
    ("old", "new", "path", "reason", "line_text"),
    [
        pytest.param(
            "          not reported: [UNK]\n",
            "",
            "groupings.race_ethnicity.levels[0].groups",
            "code 'UNK' is in no group of level 'partnership grouping'",
            "        groups:",
            id="code-missing",
        ),
        pytest.param(
            "          white: [WHITE]\n",
            "          white: [WHITE, ASIAN]\n",
            "groupings.race_ethnicity.levels[0].groups.white[1]",
            "code 'ASIAN' is already in group 'teachers of colour'",
            "white: [WHITE, ASIAN]",
            id="code-twice",
        ),
        pytest.param(
            "          white: [WHITE]\n",
            "          white: [WHITE, CAUC]\n",
            "groupings.race_ethnicity.levels[0].groups.white[1]",
            "'CAUC' is not one of the codes of 'race_ethnicity'",
            "white: [WHITE, CAUC]",
            id="unknown-code",
        ),
        pytest.param(
            "    top: all races and ethnicities\n",
            "      - name: reported\n        groups:\n"
            "          reported: [HISP, AIAN, ASIAN, BLACK, NHPI, WHITE]\n"
            "          other: [MULTI, UNK]\n"
            "    top: all races and ethnicities\n",
            "groupings.race_ethnicity.levels[1].groups.other",
            "level 'reported' splits group 'teachers of colour' of level 'partnership "
            "grouping' between 'reported' and 'other'",
            "          other: [MULTI, UNK]",
            id="levels-do-not-nest",
        ),
        pytest.param(
            "          not reported: [UNK]\n",
            "          White: [UNK]\n",
            "groupings.race_ethnicity.levels[0].groups.White",
            "label 'White' repeats 'white' in this level",
            "White: [UNK]",
            id="label-repeats",
        ),
        pytest.param(
            "groupings:\n  race_ethnicity:\n",
            "groupings:\n  ethnicity:\n",
            "groupings.ethnicity",
            "'ethnicity' is not a stored field of any dataset of this agreement",
            "  ethnicity:",
            id="not-a-stored-field",
        ),
        pytest.param(
            "groupings:\n  race_ethnicity:\n",
            "groupings:\n  hires.race_ethnicity:\n",
            'groupings["hires.race_ethnicity"]',
            "names dataset 'hires', which this agreement does not have",
            "  hires.race_ethnicity:",
            id="unknown-dataset",
        ),
        pytest.param(
            "groupings:\n  race_ethnicity:\n",
            "groupings:\n  staffing.race_ethnicity:\n",
            'groupings["staffing.race_ethnicity"]',
            "is not a stored field of dataset 'staffing'",
            "  staffing.race_ethnicity:",
            id="not-stored-by-that-dataset",
        ),
        pytest.param(
            "groupings:\n  race_ethnicity:\n",
            "groupings:\n  educator_id:\n",
            "groupings.educator_id",
            "'educator_id' is the educator ID: it is never released, so never coarsened",
            "  educator_id:",
            id="educator-id",
        ),
    ],
)
def test_each_grouping_rule_is_refused_with_file_line_and_path(
    tmp_path: Path, old: str, new: str, path: str, reason: str, line_text: str
) -> None:
    file = variant(tmp_path, DIVERSITY, (old, new))
    registry, problems = check_agreements(file, POLICIES)
    problem = only_problem(problems)
    assert (problem.file, problem.path) == (str(file), path)
    assert reason in problem.reason, problem.reason
    assert problem.line == line_of(file, line_text, after="groupings:")
    assert registry.agreements == {}


def test_a_qualified_grouping_wins_over_the_plain_one(tmp_path: Path) -> None:
    file = variant(
        tmp_path,
        DIVERSITY,
        (
            "    top: all races and ethnicities\n",
            "    top: all races and ethnicities\n"
            "  evaluations.race_ethnicity:\n"
            "    levels:\n"
            "      - name: reported\n"
            "        groups: {reported: [HISP, AIAN, ASIAN, BLACK, NHPI, WHITE, MULTI], "
            "unreported: [UNK]}\n",
        ),
        # The plain release field would now coarsen two ways: ask for it per dataset.
        (
            "- race_ethnicity\n      - cohort_year",
            "- completers.race_ethnicity\n      - cohort_year",
        ),
        (
            "- race_ethnicity\n      - cohort_year",
            "- completers.race_ethnicity\n      - cohort_year",
        ),
    )
    registry, problems = check_agreements(file, POLICIES)
    assert problems == []
    agreement = registry.agreement("diversity-cedar-valley-harmon")
    evaluations = agreement.hierarchy("evaluations", "race_ethnicity")
    completers = agreement.hierarchy("completers", "race_ethnicity")
    assert evaluations is not None and completers is not None
    assert evaluations.parent("BLACK", 0) == "reported"
    assert completers.parent("BLACK", 0) == "teachers of colour"


def test_a_plain_release_field_must_coarsen_one_way(tmp_path: Path, policies: Path) -> None:
    # Staffing's licensure areas coarsen differently from the other schemas'.
    edit(
        policies / "datasets" / "staffing.yaml",
        "            special education: [SPED]\n"
        "            secondary subjects: [ELA, MATH, SCI, SS]\n",
        "            special education and secondary: [SPED, ELA, MATH, SCI, SS]\n",
    )
    _, problems = check_agreements(DIVERSITY, policies)
    assert [(p.path, p.line) for p in problems] == [
        (
            "releases.cedar-valley-college.dimensions[5]",
            line_of(DIVERSITY, "- licensure_area", after="  cedar-valley-college:"),
        ),
        (
            "releases.harmon-usd.dimensions[5]",
            line_of(DIVERSITY, "- licensure_area", after="  harmon-usd:"),
        ),
    ]
    assert "'licensure_area' coarsens differently in dataset 'candidate_interest' than in " in (
        problems[0].reason
    )
    assert "dataset 'staffing'" in problems[0].reason

    # The agreement settles it with its own grouping.
    agreements = tmp_path / "agreements"
    agreements.mkdir()
    file = variant(
        agreements,
        DIVERSITY,
        (
            "groupings:\n",
            "groupings:\n  licensure_area:\n    levels:\n      - name: sped or not\n"
            "        groups:\n          special education: [SPED]\n          other areas: "
            "[ECE, ELEM, MID, ELA, MATH, SCI, SS, WL, ESL, BIL, ART, MUS, PE, CTE]\n",
        ),
    )
    registry, problems = check_agreements(file, policies)
    assert problems == []
    licensure = registry.agreement("diversity-cedar-valley-harmon").field_hierarchy(
        "licensure_area"
    )
    assert licensure is not None
    assert licensure.parents("MUS") == ("other areas", "all")


def test_public_values_must_all_be_in_the_schema_hierarchy(tmp_path: Path) -> None:
    file = variant(
        tmp_path,
        CALIBRATION,
        (
            "program_code: [ELEM, SPED, SECELA, SECMATH, ECE, SECSCI, ESL, WL, MUSED]",
            "program_code: [ELEM, SPED, SECELA, SECMATH, ECE, SECSCI, ESL, WL, MUSED, DANCE]",
        ),
    )
    _, problems = check_agreements(file, POLICIES)
    problem = only_problem(problems)
    assert problem.path == "public_values.program_code[9]"
    assert problem.line == line_of(file, "program_code: [ELEM", after="public_values:")
    assert problem.reason == (
        "'DANCE' is in no group of level 'program area' of the hierarchy of "
        "completers.program_code (policies/datasets/completers.yaml): add it there, or "
        "declare this agreement's own groupings.program_code"
    )

    # Its own grouping of its programs is checked against its public values instead.
    own = (
        "groupings:\n  program_code:\n    levels:\n      - name: area\n        groups:\n"
        "          general: [ELEM, SECELA, SECMATH, ECE, SECSCI, ESL, WL, MUSED, DANCE]\n"
        "          special education: [SPED]\n"
        "reports:\n"
    )
    file = variant(
        tmp_path,
        CALIBRATION,
        (
            "program_code: [ELEM, SPED, SECELA, SECMATH, ECE, SECSCI, ESL, WL, MUSED]",
            "program_code: [ELEM, SPED, SECELA, SECMATH, ECE, SECSCI, ESL, WL, MUSED, DANCE]",
        ),
        ("reports:\n", own),
    )
    registry, problems = check_agreements(file, POLICIES)
    assert problems == []
    programs = registry.agreement("calibration-lakeshore-riverbend").field_hierarchy("program_code")
    assert programs is not None and programs.parents("DANCE") == ("general", "all")

    file = variant(
        tmp_path,
        CALIBRATION,
        ("reports:\n", own.replace("SPED]", "SPED, SECSS]")),
    )
    _, problems = check_agreements(file, POLICIES)
    assert [(p.path, p.reason) for p in problems] == [
        (
            "groupings.program_code.levels[0].groups.general[8]",
            "'DANCE' is not one of this agreement's public_values of 'program_code'",
        ),
        (
            'groupings.program_code.levels[0].groups["special education"][1]',
            "'SECSS' is not one of this agreement's public_values of 'program_code'",
        ),
    ]


def test_schools_group_into_levels_once_the_agreement_lists_them(tmp_path: Path) -> None:
    file = variant(
        tmp_path,
        CALIBRATION,
        (
            "reports:\n",
            "groupings:\n  school_code:\n    levels:\n      - name: school level\n"
            "        groups:\n          elementary: [E01, E02]\n          secondary: [M01, H01]\n"
            "    top: all schools\n"
            "reports:\n",
        ),
        ("public_values:\n", "public_values:\n  school_code: [E01, E02, M01, H01]\n"),
    )
    registry, problems = check_agreements(file, POLICIES)
    assert problems == []
    schools = registry.agreement("calibration-lakeshore-riverbend").field_hierarchy("school_code")
    assert schools is not None
    assert schools.parents("M01") == ("secondary", "all schools")


# --- properties ---------------------------------------------------------------------------

_codes = st.lists(
    st.from_regex(r"[A-Z]{1,3}", fullmatch=True), min_size=1, max_size=10, unique=True
)


def _column(codes: list[str]) -> ColumnSpec:
    return ColumnSpec.model_validate(
        {
            "type": "string",
            "role": "quasi_identifier",
            "required": True,
            "description": "A coded column.",
            "codes": codes,
        }
    )


@st.composite
def _nested(draw: st.DrawFn) -> tuple[list[str], list[dict[str, list[str]]]]:
    """Codes and a valid chain of partitions of them, each coarser than the one before."""
    codes = draw(_codes)
    # Each level assigns every block of the level below to a block of its own.
    blocks = {code: draw(st.integers(0, len(codes) - 1)) for code in codes}
    levels = []
    for depth in range(draw(st.integers(1, 4))):
        if depth:
            merge = {b: draw(st.integers(0, len(codes) - 1)) for b in sorted(set(blocks.values()))}
            blocks = {code: merge[block] for code, block in blocks.items()}
        groups: dict[str, list[str]] = {}
        for code in codes:
            groups.setdefault(f"L{depth} group {blocks[code]}", []).append(code)
        levels.append(groups)
    return codes, levels


def _hierarchy(levels: list[dict[str, list[Any]]]) -> Hierarchy:
    return Hierarchy(
        levels=[HierarchyLevel(name=f"level {i}", groups=g) for i, g in enumerate(levels)],
        top="everything",
    )


@settings(max_examples=200, deadline=None)
@given(_nested())
def test_every_code_has_one_parent_per_level_and_parents_nest(
    drawn: tuple[list[str], list[dict[str, list[str]]]],
) -> None:
    codes, levels = drawn
    hierarchy = _hierarchy(levels)
    assert check_hierarchy(hierarchy, _column(codes), name="x", base=(), codes=codes) == []
    depth = len(hierarchy.level_names)
    for level in range(depth):
        groups = hierarchy.groups(level)
        for code in codes:
            holding = [label for label, members in groups.items() if code in members]
            assert holding == [hierarchy.parent(code, level)]  # exactly one parent
    for level in range(depth - 1):
        # Codes sharing a parent share every coarser parent too.
        for members in hierarchy.groups(level).values():
            assert len({hierarchy.parent(code, level + 1) for code in members}) == 1
    assert all(hierarchy.parents(code)[-1] == "everything" for code in codes)


@settings(max_examples=300, deadline=None)
@given(
    _codes.flatmap(
        lambda codes: st.tuples(
            st.just(codes),
            st.lists(
                st.lists(
                    st.lists(st.sampled_from([*codes, "ZZZZ"]), min_size=1, max_size=4),
                    min_size=1,
                    max_size=4,
                ),
                min_size=1,
                max_size=3,
            ),
        )
    )
)
def test_the_checker_accepts_exactly_the_nested_partitions(
    drawn: tuple[list[str], list[list[list[str]]]],
) -> None:
    codes, raw = drawn
    levels = [{f"g{i}": members for i, members in enumerate(level)} for level in raw]
    hierarchy = _hierarchy(levels)
    findings = check_hierarchy(hierarchy, _column(codes), name="x", base=(), codes=codes)

    def partition(level: dict[str, list[str]]) -> bool:
        listed = [code for members in level.values() for code in members]
        return sorted(listed) == sorted(codes)

    def nests(finer: dict[str, list[str]], coarser: dict[str, list[str]]) -> bool:
        return all(
            any(set(members) <= set(parent) for parent in coarser.values())
            for members in finer.values()
        )

    valid = all(partition(level) for level in levels) and all(
        nests(a, b) for a, b in itertools.pairwise(levels)
    )
    assert (findings == []) == valid, findings
    if valid:
        restricted = hierarchy.restricted_to(codes[::2])
        for code in codes[::2]:
            assert restricted.parents(code) == hierarchy.parents(code)


@given(
    st.lists(st.integers(1, 10), min_size=1, max_size=4, unique=True).map(sorted),
    st.lists(st.integers(2000, 2100), min_size=1, max_size=6),
)
def test_pooled_windows_nest(pools: list[int], years: list[int]) -> None:
    hierarchy = Hierarchy(levels=[HierarchyLevel(name=f"{p} years", pool=p) for p in pools])
    column = ColumnSpec.model_validate(
        {
            "type": "integer",
            "role": "quasi_identifier",
            "required": True,
            "description": "Years.",
            "range": {"min": 2000, "max": 2100},
        }
    )
    assert check_hierarchy(hierarchy, column, name="year", base=(), codes=None) == []
    for year in years:
        windows = [hierarchy.groups(level, [year]) for level in range(len(pools))]
        for level, window in enumerate(windows):
            assert list(window) == [hierarchy.parent(year, level)]
            assert year in next(iter(window.values()))
        for finer, coarser in itertools.pairwise(windows):
            assert set(next(iter(finer.values()))) <= set(next(iter(coarser.values())))
