"""Synthetic extracts: valid for their schemas, linked across parties, realistic, reproducible."""

from __future__ import annotations

import re
import tempfile
from collections import defaultdict
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.agreements import Agreement, AgreementDataset, DatasetSchema, Registry, load_registry
from gateway.pseudonym import Normalisation
from gateway_synthetic import Extract, generate_agreement_extracts, write_evaluations_csv
from tests.conftest import AGREEMENTS_DIR, POLICIES_DIR

AGREEMENT_IDS = sorted(path.stem for path in AGREEMENTS_DIR.glob("*.yaml"))
SMALL = 0.1  # most checks; the distribution checks need full-size programs
EPP_DATASETS = {"completers"}
DISTRICT_PEOPLE = {"evaluations", "staffing"}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry(AGREEMENTS_DIR, POLICIES_DIR)


def generate_all(
    registry: Registry, out: Path, *, seed: int, scale: float
) -> dict[str, list[Extract]]:
    return {
        agreement_id: generate_agreement_extracts(
            registry.agreement(agreement_id), registry.schemas, out, seed=seed, scale=scale
        )
        for agreement_id in AGREEMENT_IDS
    }


@pytest.fixture(scope="module")
def small(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Extract]]:
    return generate_all(registry, tmp_path_factory.mktemp("small"), seed=0, scale=SMALL)


@pytest.fixture(scope="module")
def full(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Extract]]:
    return generate_all(registry, tmp_path_factory.mktemp("full"), seed=11, scale=1.0)


# --- reading the files back the way a party's file would be read ------------------------------


def read_raw(path: Path) -> pd.DataFrame:
    """Every cell as text, exactly as written (blanks stay blank)."""
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    if path.suffix == ".xlsx":
        return pd.read_excel(path, dtype=str, keep_default_na=False)
    if path.suffix == ".parquet":
        return pd.read_parquet(path).astype(str)
    raise AssertionError(f"unexpected file type {path}")


def canonical(frame: pd.DataFrame, dataset: AgreementDataset) -> pd.DataFrame:
    """The frame with the party's headers mapped to canonical column names."""
    return frame.rename(columns=dict(dataset.header_map))


def read_dataset(agreement: Agreement, extracts: list[Extract], name: str) -> pd.DataFrame:
    extract = next(e for e in extracts if e.dataset == name)
    return canonical(read_raw(extract.path), agreement.dataset(name))


def normalise(raw: str, schema: DatasetSchema) -> str:
    """The schema's ID normalisation, written out here rather than imported."""
    column = schema.educator_id_column
    assert column is not None
    rule = schema.columns[column].normalization
    assert rule is not None
    value = raw
    if rule.trim:
        # As gateway.pseudonym defines trim: inner blanks too ("000 123 456").
        value = "".join(value.split())
    if rule.upper:
        value = value.upper()
    if rule.strip_leading_zeros:
        value = value.lstrip("0")
    return value


def normalised_ids(frame: pd.DataFrame, schema: DatasetSchema) -> pd.Series:
    return frame["educator_id"].map(lambda raw: normalise(raw, schema))


def value_problems(frame: pd.DataFrame, schema: DatasetSchema) -> list[str]:
    """Every way the canonical columns of ``frame`` break ``schema``: empty when valid."""
    problems = []
    for name in frame.columns:
        if name not in schema.columns:
            continue
        spec = schema.columns[name]
        values = frame[name]
        if (values == "").any():
            problems.append(f"{name}: blank values")
            continue
        if spec.type == "integer":
            bad = ~values.str.fullmatch(r"-?[0-9]+")
            if bad.any():
                problems.append(f"{name}: not integers, e.g. {values[bad].iloc[0]!r}")
                continue
            numbers = values.astype(int)
        elif spec.type == "number":
            numbers = pd.to_numeric(values, errors="coerce")
            if numbers.isna().any():
                problems.append(f"{name}: not numbers")
                continue
        elif spec.type == "date":
            try:
                values.map(date.fromisoformat)
            except ValueError as exc:
                problems.append(f"{name}: not ISO dates ({exc})")
                continue
            if not values.str.fullmatch(r"\d{4}-\d{2}-\d{2}").all():
                problems.append(f"{name}: not YYYY-MM-DD")
        if spec.codes:
            allowed = {str(code) for code in spec.code_values}
            unknown = set(values) - allowed
            if unknown:
                problems.append(f"{name}: unknown codes {sorted(unknown)}")
        if spec.range is not None and spec.type in ("integer", "number"):
            if spec.range.min is not None and (numbers < spec.range.min).any():
                problems.append(f"{name}: below {spec.range.min}")
            if spec.range.max is not None and (numbers > spec.range.max).any():
                problems.append(f"{name}: above {spec.range.max}")
        if spec.role == "educator_id":
            assert spec.pattern is not None
            ids = normalised_ids(frame, schema)
            invalid = ~ids.str.fullmatch(spec.pattern)
            if invalid.any():
                problems.append(f"{name}: {int(invalid.sum())} IDs invalid after normalisation")
            # The gateway's own normaliser must agree with the one written out above.
            rule = spec.normalization
            assert rule is not None
            gateway_rule = Normalisation(
                trim=rule.trim,
                upper=rule.upper,
                strip_leading_zeros=rule.strip_leading_zeros,
                pattern=spec.pattern,
            )
            if list(values.map(gateway_rule.normalise)) != list(ids):
                problems.append(f"{name}: gateway.pseudonym normalises differently")
        elif spec.pattern is not None and not values.str.fullmatch(spec.pattern).all():
            problems.append(f"{name}: values outside {spec.pattern}")
        if spec.type == "date" and name == "observation_date" and "school_year" in frame:
            year = frame["school_year"].astype(int)
            start = (year - 1).astype(str) + "-07-01"
            end = year.astype(str) + "-06-30"
            if not ((values >= start) & (values <= end)).all():
                problems.append(f"{name}: dates outside their school year")
    missing = [name for name, spec in schema.columns.items() if spec.required and name not in frame]
    if missing:
        problems.append(f"required columns missing: {missing}")
    key = frame[schema.key].copy()
    if schema.educator_id_column in key:
        key[schema.educator_id_column] = normalised_ids(frame, schema)
    if key.duplicated().any():
        problems.append(f"{int(key.duplicated().sum())} duplicate keys on {schema.key}")
    return problems


# --- every agreement, every dataset ---------------------------------------------------------------


@pytest.mark.parametrize("agreement_id", AGREEMENT_IDS)
def test_one_file_per_dataset(
    registry: Registry, small: dict[str, list[Extract]], agreement_id: str
) -> None:
    agreement = registry.agreement(agreement_id)
    extracts = small[agreement_id]
    assert [e.dataset for e in extracts] == [d.name for d in agreement.datasets]
    for extract, dataset in zip(extracts, agreement.datasets, strict=True):
        assert extract.agreement_id == agreement_id
        assert extract.party == dataset.provided_by
        assert extract.path.is_file()
        assert extract.path.parent.name == agreement_id
        assert extract.rows == len(read_raw(extract.path)) > 0


@pytest.mark.parametrize("agreement_id", AGREEMENT_IDS)
@pytest.mark.parametrize("size", ["small", "full"])
def test_every_value_is_valid(
    registry: Registry, request: pytest.FixtureRequest, agreement_id: str, size: str
) -> None:
    agreement = registry.agreement(agreement_id)
    extracts: dict[str, list[Extract]] = request.getfixturevalue(size)
    for extract in extracts[agreement_id]:
        dataset = agreement.dataset(extract.dataset)
        schema = registry.schema(dataset.schema_name)
        frame = read_dataset(agreement, extracts[agreement_id], extract.dataset)
        assert value_problems(frame, schema) == [], extract.path.name
        if schema.name == "vacancies":
            posted = frame["positions_posted"].astype(int)
            assert (frame["positions_unfilled"].astype(int) <= posted).all()


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**32), scale=st.floats(min_value=0.03, max_value=0.15))
def test_valid_for_any_seed_and_scale(registry: Registry, seed: int, scale: float) -> None:
    with tempfile.TemporaryDirectory() as folder:
        for agreement_id, extracts in generate_all(
            registry, Path(folder), seed=seed, scale=scale
        ).items():
            agreement = registry.agreement(agreement_id)
            for extract in extracts:
                schema = registry.schema(agreement.dataset(extract.dataset).schema_name)
                frame = read_dataset(agreement, extracts, extract.dataset)
                assert value_problems(frame, schema) == [], extract.path.name


@pytest.mark.parametrize("agreement_id", AGREEMENT_IDS)
def test_headers_are_the_partys_and_one_column_is_not_stored(
    registry: Registry, small: dict[str, list[Extract]], agreement_id: str
) -> None:
    agreement = registry.agreement(agreement_id)
    for extract in small[agreement_id]:
        dataset = agreement.dataset(extract.dataset)
        schema = registry.schema(dataset.schema_name)
        headers = list(read_raw(extract.path).columns)
        mapped = set(dataset.header_map.values())
        for header in headers:
            if header in dataset.header_map:
                continue
            # A canonical name is written only where the agreement maps no party header.
            assert header not in mapped, (extract.path.name, header)
            assert header in schema.columns or header == "notes", (extract.path.name, header)
        columns = set(canonical(read_raw(extract.path), dataset).columns)
        kept_or_dropped_on_purpose = (
            set(dataset.stored_fields)
            | set(schema.direct_identifiers)
            | {name for name, spec in schema.columns.items() if spec.required}
        )
        assert len(columns - kept_or_dropped_on_purpose) == 1, extract.path.name
        for name in schema.direct_identifiers:
            assert name in columns, (extract.path.name, name)


def test_all_three_file_formats_are_used(small: dict[str, list[Extract]]) -> None:
    suffixes = {e.path.suffix for extracts in small.values() for e in extracts}
    assert suffixes == {".csv", ".xlsx", ".parquet"}


@pytest.mark.parametrize("agreement_id", AGREEMENT_IDS)
def test_deterministic_for_a_seed(
    registry: Registry, small: dict[str, list[Extract]], agreement_id: str, tmp_path: Path
) -> None:
    agreement = registry.agreement(agreement_id)
    again = generate_agreement_extracts(agreement, registry.schemas, tmp_path, scale=SMALL)
    other = generate_agreement_extracts(
        agreement, registry.schemas, tmp_path / "other", seed=1, scale=SMALL
    )
    for first, second in zip(small[agreement_id], again, strict=True):
        pd.testing.assert_frame_equal(read_raw(first.path), read_raw(second.path))
    assert any(
        not read_raw(a.path).equals(read_raw(b.path))
        for a, b in zip(small[agreement_id], other, strict=True)
    )


def test_scale_multiplies_rows(
    small: dict[str, list[Extract]], full: dict[str, list[Extract]]
) -> None:
    for agreement_id in AGREEMENT_IDS:
        for little, big in zip(small[agreement_id], full[agreement_id], strict=True):
            if little.dataset not in ("candidate_interest", "vacancies"):
                assert big.rows > 4 * little.rows, little.path.name


def test_scale_must_be_positive(registry: Registry, tmp_path: Path) -> None:
    agreement = registry.agreement(AGREEMENT_IDS[0])
    with pytest.raises(ValueError, match="scale"):
        generate_agreement_extracts(agreement, registry.schemas, tmp_path, scale=0)


# --- one world per agreement: the same teachers on both sides ------------------------------------


def linked_agreements(registry: Registry) -> list[str]:
    return [
        agreement_id
        for agreement_id in AGREEMENT_IDS
        if {d.name for d in registry.agreement(agreement_id).datasets} & DISTRICT_PEOPLE
        and "completers" in {d.name for d in registry.agreement(agreement_id).datasets}
    ]


@pytest.mark.parametrize("size", ["small", "full"])
def test_completers_and_district_staff_overlap_but_not_entirely(
    registry: Registry, request: pytest.FixtureRequest, size: str
) -> None:
    extracts: dict[str, list[Extract]] = request.getfixturevalue(size)
    agreements = linked_agreements(registry)
    assert agreements
    for agreement_id in agreements:
        agreement = registry.agreement(agreement_id)
        completers = read_dataset(agreement, extracts[agreement_id], "completers")
        epp = set(normalised_ids(completers, registry.schema("completers")))
        district: set[str] = set()
        for name in DISTRICT_PEOPLE & {d.name for d in agreement.datasets}:
            frame = read_dataset(agreement, extracts[agreement_id], name)
            district |= set(normalised_ids(frame, registry.schema(name)))
        both = epp & district
        assert both, agreement_id
        assert both != epp, agreement_id  # not every completer is hired
        assert both != district, agreement_id  # the district employs others too


def test_a_good_share_of_completers_is_hired(
    registry: Registry, full: dict[str, list[Extract]]
) -> None:
    for agreement_id in linked_agreements(registry):
        agreement = registry.agreement(agreement_id)
        if any("cooperative" in p.name.lower() for p in agreement.parties):
            continue  # a special-education cooperative hires mostly special educators
        completers = read_dataset(agreement, full[agreement_id], "completers")
        completed = completers[
            (completers["completion_status"] == "completed")
            & (completers["cohort_year"].astype(int) < 2025)
        ]
        hired = set()
        for name in DISTRICT_PEOPLE & {d.name for d in agreement.datasets}:
            frame = read_dataset(agreement, full[agreement_id], name)
            if name == "staffing":
                frame = frame[frame["position"] != "intern"]
            hired |= set(normalised_ids(frame, registry.schema(name)))
        share = normalised_ids(completed, registry.schema("completers")).isin(hired).mean()
        assert 0.4 <= share <= 0.7, (agreement_id, share)


def test_the_same_teacher_is_written_differently_on_each_side(
    registry: Registry, small: dict[str, list[Extract]]
) -> None:
    for agreement_id in linked_agreements(registry):
        agreement = registry.agreement(agreement_id)
        raw_by_side: dict[str, defaultdict[str, set[str]]] = {
            "epp": defaultdict(set),
            "district": defaultdict(set),
        }
        for extract in small[agreement_id]:
            dataset = agreement.dataset(extract.dataset)
            schema = registry.schema(dataset.schema_name)
            if schema.educator_id_column is None:
                continue
            side = agreement.party(dataset.provided_by).kind
            frame = read_dataset(agreement, small[agreement_id], extract.dataset)
            for raw, norm in zip(frame["educator_id"], normalised_ids(frame, schema), strict=True):
                raw_by_side[side][norm].add(raw)
        shared = raw_by_side["epp"].keys() & raw_by_side["district"].keys()
        differ = [n for n in shared if not raw_by_side["epp"][n] & raw_by_side["district"][n]]
        assert differ, agreement_id
        raw_epp = {raw for raws in raw_by_side["epp"].values() for raw in raws}
        raw_district = {raw for raws in raw_by_side["district"].values() for raw in raws}
        assert any(raw != raw.strip() for raw in raw_epp | raw_district)
        assert any(raw.startswith("0") for raw in raw_district)
        assert not any(raw.startswith("0") for raw in raw_epp)


# --- realistic distributions (full size) -----------------------------------------------------


def test_programs_are_large_and_small(registry: Registry, full: dict[str, list[Extract]]) -> None:
    for agreement_id in AGREEMENT_IDS:
        agreement = registry.agreement(agreement_id)
        if "completers" not in {d.name for d in agreement.datasets}:
            continue
        completers = read_dataset(agreement, full[agreement_id], "completers")
        completed = completers[completers["completion_status"] == "completed"]
        sizes = completed.groupby(["program_code", "cohort_year"]).size()
        assert sizes.min() < 10, agreement_id
        assert sizes.max() > 20, agreement_id
        assert completers["cohort_year"].nunique() >= 5
        assert set(completers["completion_status"]) == {"completed", "in_progress", "withdrawn"}


def test_ratings_and_scores_are_mostly_proficient(
    registry: Registry, full: dict[str, list[Extract]]
) -> None:
    checked = 0
    for agreement_id in AGREEMENT_IDS:
        agreement = registry.agreement(agreement_id)
        for dataset in agreement.datasets:
            column = {"evaluations": "summative_rating", "observations": "score"}.get(
                dataset.schema_name
            )
            if column is None:
                continue
            frame = read_dataset(agreement, full[agreement_id], dataset.name)
            counts = frame[column].value_counts(normalize=True)
            assert counts.idxmax() == "3", (agreement_id, dataset.name)
            assert counts["4"] > counts["2"] > counts["1"] > 0, (agreement_id, dataset.name)
            checked += 1
    assert checked >= 5


def test_growth_scores_centre_on_fifty(registry: Registry, full: dict[str, list[Extract]]) -> None:
    checked = 0
    for agreement_id in AGREEMENT_IDS:
        agreement = registry.agreement(agreement_id)
        for dataset in agreement.datasets:
            if dataset.schema_name != "value_added":
                continue
            frame = read_dataset(agreement, full[agreement_id], dataset.name)
            growth = frame["growth_score"].astype(float)
            assert 45 <= growth.mean() <= 55
            assert 8 <= growth.std() <= 16
            assert (growth == growth.round()).all()
            students = frame["student_count"].astype(int)
            assert students.between(15, 150).all()
            checked += 1
    assert checked


def test_experience_is_skewed_to_early_career(
    registry: Registry, full: dict[str, list[Extract]]
) -> None:
    for agreement_id in AGREEMENT_IDS:
        agreement = registry.agreement(agreement_id)
        if "evaluations" not in {d.name for d in agreement.datasets}:
            continue
        years = read_dataset(agreement, full[agreement_id], "evaluations")["years_experience"]
        years = years.astype(int)
        assert years.median() < years.mean()
        assert (years < 5).mean() > 0.2


# --- the benchmark file ---------------------------------------------------------------------------

BENCH_HEADER = [
    "educator_id",
    "first_name",
    "last_name",
    "birth_date",
    "school_year",
    "district_code",
    "school_code",
    "assignment_subject",
    "grade_band",
    "years_experience",
    "summative_rating",
    "gender",
    "race_ethnicity",
]


def test_write_evaluations_csv(registry: Registry, tmp_path: Path) -> None:
    path = write_evaluations_csv(tmp_path / "big" / "evaluations.csv", rows=20_000, seed=3)
    frame = read_raw(path)
    assert list(frame.columns) == BENCH_HEADER
    assert len(frame) == 20_000
    assert value_problems(frame, registry.schema("evaluations")) == []
    assert frame["summative_rating"].value_counts().idxmax() == "3"
    again = write_evaluations_csv(tmp_path / "again.csv", rows=20_000, seed=3)
    assert again.read_bytes() == path.read_bytes()


@settings(max_examples=15, deadline=None)
@given(rows=st.integers(min_value=0, max_value=60), seed=st.integers(0, 2**32))
def test_write_evaluations_csv_any_size(rows: int, seed: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = write_evaluations_csv(Path(folder) / "e.csv", rows=rows, seed=seed)
        lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].split(",") == BENCH_HEADER
    assert len(lines) == rows + 1
    keys = {
        (re.sub(r"\s", "", line.split(",")[0]).lstrip("0"), line.split(",")[4])
        for line in lines[1:]
    }
    assert len(keys) == rows


def test_the_generator_is_not_part_of_the_gateway_package() -> None:
    """The product does not ship demo data: the generator is its own project
    (synthetic/), which the demo, the tests and the benchmarks import."""
    import importlib.util

    import gateway
    import gateway_synthetic

    package = Path(gateway.__file__).resolve().parent
    assert importlib.util.find_spec("gateway.synthetic") is None
    assert not list(package.rglob("synthetic*.py"))
    assert package not in Path(gateway_synthetic.__file__).resolve().parents


def test_the_demo_without_its_generator_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from gateway.demo import run_demo
    from gateway.errors import ConfigurationError

    monkeypatch.setitem(sys.modules, "gateway_synthetic", None)  # as if not installed
    with pytest.raises(ConfigurationError, match=r"run `make run`.*pip install -e \./synthetic"):
        run_demo(tmp_path / "demo", echo=None)
    assert not (tmp_path / "demo").exists()  # nothing made
