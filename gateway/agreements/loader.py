"""Read agreements and policies from disk, check them, and build the registry.

:func:`check_agreements` never raises for bad content: it reports every
problem it can find, each with the file, the YAML path, the line and a reason,
so an operator fixes a file in one pass. :func:`load_registry` is the strict
form the rest of the gateway uses: any problem at all and nothing is loaded.

Structural problems (missing keys, wrong types) are found first; the rules
that compare fields with each other and with the policies run once a file's
structure is valid, since they need typed values to compare.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from gateway.agreements.agreement_checks import Policies, check_agreement, effective_hierarchies
from gateway.agreements.findings import Finding, validation_findings
from gateway.agreements.models import (
    Agreement,
    AgreementDataset,
    AgreementDocument,
    DatasetSchema,
    DisclosureProfile,
)
from gateway.agreements.policy_checks import check_dataset_schema, check_disclosure_profile
from gateway.agreements.yamldoc import Loc, YamlDocument, YamlSyntaxError, format_path, parse_yaml
from gateway.errors import AgreementInvalid, NotFound

_YAML_SUFFIXES = (".yaml", ".yml")

_Model = TypeVar("_Model", bound=BaseModel)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file: where it is and why it is wrong."""

    file: str
    path: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        """``file:line: path: reason``, leaving out the parts that are unknown."""
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.reason}" if self.path else f"{where}: {self.reason}"


@dataclass(frozen=True)
class Registry:
    """The valid agreements, dataset schemas and disclosure profiles, by name."""

    agreements: dict[str, Agreement]
    schemas: dict[str, DatasetSchema]
    profiles: dict[str, DisclosureProfile]

    def agreement(self, agreement_id: str) -> Agreement:
        """The agreement with this id; :class:`NotFound` if none is loaded."""
        try:
            return self.agreements[agreement_id]
        except KeyError:
            known = ", ".join(sorted(self.agreements)) or "none"
            raise NotFound(
                f"no agreement {agreement_id!r} is loaded (agreements: {known})"
            ) from None

    def schema(self, name: str) -> DatasetSchema:
        """The dataset schema called ``name``; :class:`NotFound` if there is none."""
        try:
            return self.schemas[name]
        except KeyError:
            raise NotFound(f"no dataset schema {name!r}") from None

    def schema_for(self, dataset: AgreementDataset) -> DatasetSchema:
        """The schema an agreement's dataset follows (always present for a loaded
        agreement: the checker refuses unknown schemas)."""
        return self.schema(dataset.schema_name)


def load_registry(agreements: Path, policies: Path) -> Registry:
    """The registry of ``agreements`` (a folder or one file) against ``policies``.

    Raises :class:`AgreementInvalid`, with every problem as a detail line, if any
    agreement or policy file has a problem: the gateway never runs on an
    agreement that is only partly right.
    """
    registry, problems = check_agreements(agreements, policies)
    if problems:
        raise AgreementInvalid(
            f"{len(problems)} problem(s) in the agreement files ({agreements}) or the policy "
            f"files ({policies}); "
            "run `gateway agreements check` for the list",
            details=[str(problem) for problem in problems],
        )
    return registry


def check_agreements(agreements: Path, policies: Path) -> tuple[Registry, list[Problem]]:
    """Check ``agreements`` (a folder of ``*.yaml``/``*.yml``, or one file) and the
    policies under ``policies`` (``datasets/`` and ``profiles/``).

    Returns the registry of the files that are valid and every problem found,
    in file order and, within a file, in line order. Never raises for bad content.
    """
    problems: list[Problem] = []
    schemas, invalid_schemas = _load_policy_folder(
        policies / "datasets", DatasetSchema, check_dataset_schema, problems
    )
    profiles, invalid_profiles = _load_policy_folder(
        policies / "profiles", DisclosureProfile, check_disclosure_profile, problems
    )
    policy_set = Policies(
        schemas=schemas,
        profiles=profiles,
        invalid_schemas=frozenset(invalid_schemas),
        invalid_profiles=frozenset(invalid_profiles),
    )

    loaded: dict[Path, Agreement] = {}
    ids: dict[str, list[tuple[Path, YamlDocument]]] = defaultdict(list)
    for path in _yaml_files(agreements, problems, what="agreement"):
        agreement, document = _load_agreement(path, policy_set, problems)
        if agreement is not None:
            loaded[path] = agreement
        if document is not None and isinstance(document.data, dict):
            agreement_id = document.data.get("id")
            if isinstance(agreement_id, str):
                ids[agreement_id].append((path, document))

    for agreement_id, files in ids.items():
        if len(files) < 2:
            continue
        # Which of two files with one id is the real agreement is the operator's
        # call, not ours: neither is loaded.
        for path, document in files:
            others = ", ".join(str(other) for other, _ in files if other != path)
            problems.append(
                _problem(
                    path,
                    document,
                    ("id",),
                    f"agreement id {agreement_id!r} is also used by {others}",
                )
            )
            loaded.pop(path, None)

    registry = Registry(
        agreements={agreement.id: agreement for agreement in loaded.values()},
        schemas=schemas,
        profiles=profiles,
    )
    return registry, _in_reading_order(problems)


def _in_reading_order(problems: list[Problem]) -> list[Problem]:
    files = list(dict.fromkeys(problem.file for problem in problems))
    rank = {name: index for index, name in enumerate(files)}
    return sorted(problems, key=lambda p: (rank[p.file], p.line or 0))


def _yaml_files(target: Path, problems: list[Problem], *, what: str) -> list[Path]:
    if target.is_file():
        return [target]
    if target.is_dir():
        return sorted(
            path
            for path in target.iterdir()
            if path.suffix in _YAML_SUFFIXES and path.is_file() and not path.name.startswith(".")
        )
    problems.append(Problem(str(target), "", None, f"no such {what} file or folder"))
    return []


def _problem(path: Path, document: YamlDocument | None, loc: Loc, reason: str) -> Problem:
    line = document.line_of(loc) if document is not None else None
    return Problem(str(path), format_path(loc), line, reason)


def _read(path: Path, problems: list[Problem]) -> tuple[bytes, YamlDocument] | None:
    """The file's bytes and parsed document, or None after recording why not."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problems.append(Problem(str(path), "", None, f"cannot read the file: {exc.strerror}"))
        return None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.append(Problem(str(path), "", None, f"not UTF-8 text ({exc.reason})"))
        return None
    try:
        document = parse_yaml(text)
    except YamlSyntaxError as exc:
        problems.append(Problem(str(path), "", exc.line, exc.reason))
        return None
    for loc, line in document.duplicate_keys:
        problems.append(
            Problem(
                str(path),
                format_path(loc),
                line,
                f"key {loc[-1]!r} is written twice in this mapping (YAML would silently "
                "keep only the last)",
            )
        )
    if not isinstance(document.data, dict):
        kind = "a list" if isinstance(document.data, list) else "a single value"
        problems.append(
            Problem(
                str(path), "", document.line_of(()), f"expected a mapping of fields, got {kind}"
            )
        )
        return None
    return raw, document


def _validate(
    model: type[_Model], path: Path, document: YamlDocument, problems: list[Problem]
) -> _Model | None:
    try:
        return model.model_validate(document.data)
    except ValidationError as exc:
        findings = validation_findings(exc, model, document.locate)
        problems.extend(_problem(path, document, f.loc, f.reason) for f in findings)
        return None


def _check_name_is_stem(
    path: Path, document: YamlDocument, key: str, problems: list[Problem]
) -> bool:
    """The file stem must equal the ``key`` field, so a name always finds its file."""
    value = document.data.get(key)
    if isinstance(value, str) and value != path.stem:
        problems.append(
            _problem(
                path,
                document,
                (key,),
                f"{key} {value!r} must equal the file name without extension ({path.stem!r})",
            )
        )
        return False
    return True


def _load_policy_folder(
    folder: Path,
    model: type[_Model],
    check: Callable[[_Model], list[Finding]],
    problems: list[Problem],
) -> tuple[dict[str, _Model], set[str]]:
    """The valid policies of one folder by name, and the names of the broken ones."""
    valid: dict[str, _Model] = {}
    invalid: set[str] = set()
    if not folder.is_dir():
        problems.append(Problem(str(folder), "", None, "no such policy folder"))
        return valid, invalid
    for path in _yaml_files(folder, problems, what="policy"):
        # The file stem names the policy even when its contents are broken, so
        # agreements referring to it are told "broken", not "unknown".
        if path.stem in valid or path.stem in invalid:
            problems.append(
                Problem(str(path), "", None, f"another file already defines {path.stem!r}")
            )
            valid.pop(path.stem, None)
            invalid.add(path.stem)
            continue
        before = len(problems)
        read = _read(path, problems)
        policy = None
        if read is not None:
            _, document = read
            name_ok = _check_name_is_stem(path, document, "name", problems)
            policy = _validate(model, path, document, problems)
            if policy is not None and name_ok:
                findings = check(policy)
                problems.extend(_problem(path, document, f.loc, f.reason) for f in findings)
        if policy is not None and len(problems) == before:
            valid[path.stem] = policy
        else:
            invalid.add(path.stem)
    return valid, invalid


def _terms_hash(
    raw: bytes, parsed: AgreementDocument, policies: Policies, resolved: DisclosureProfile
) -> str:
    """SHA-256 of everything that sets an agreement's terms.

    Of the file's bytes, not the parsed data: any edit, even a comment, is a new
    version and is logged as such. The dataset schemas and the resolved
    disclosure profile it refers to are included too, since changing a
    profile's minimum cell size changes the agreement as surely as editing it.
    """
    referenced = {
        "schemas": {
            d.schema_name: policies.schemas[d.schema_name].model_dump(mode="json")
            for d in parsed.datasets
        },
        "profile": resolved.model_dump(mode="json"),
    }
    digest = hashlib.sha256(raw)
    digest.update(b"\0")
    digest.update(json.dumps(referenced, sort_keys=True).encode("utf-8"))
    return digest.hexdigest()


def _load_agreement(
    path: Path, policies: Policies, problems: list[Problem]
) -> tuple[Agreement | None, YamlDocument | None]:
    """The checked agreement in ``path`` (None if it has any problem) and its document."""
    before = len(problems)
    read = _read(path, problems)
    if read is None:
        return None, None
    raw, document = read
    _check_name_is_stem(path, document, "id", problems)
    parsed = _validate(AgreementDocument, path, document, problems)
    if parsed is None:
        return None, document
    resolved, findings = check_agreement(parsed, policies)
    problems.extend(_problem(path, document, f.loc, f.reason) for f in findings)
    if resolved is None or len(problems) != before:
        return None, document
    agreement = Agreement.model_validate(
        {
            **dict(parsed),
            "resolved_disclosure": resolved,
            "content_hash": _terms_hash(raw, parsed, policies, resolved),
            "source_path": path,
            "hierarchies": effective_hierarchies(parsed, policies.schemas),
        }
    )
    return agreement, document
