"""Findings: one broken rule, as a path inside a file and a reason.

Checks return findings instead of raising, so one run reports every problem at
once; the loader turns them into :class:`~gateway.agreements.loader.Problem` s
with file names and line numbers. pydantic's validation errors become findings
here too, phrased for someone editing the YAML file.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from gateway.agreements.yamldoc import Loc, format_path


@dataclass(frozen=True)
class Finding:
    """One broken rule: where (a path inside the file) and why.

    ``related`` lists other paths that share the blame (a per-release cap
    above the budget is the cap's fault or the budget's): whichever of them
    the agreement overrides is the one reported.
    """

    loc: Loc
    reason: str
    related: tuple[Loc, ...] = field(default=())


def validation_findings(
    exc: ValidationError, model: type[BaseModel], locate: Callable[[Loc], Loc]
) -> list[Finding]:
    """One finding per pydantic error, with ``locate`` mapping error locations to
    places in the source data."""
    by_place: dict[Loc, list[ErrorDetails]] = {}
    for error in exc.errors():
        by_place.setdefault(locate(tuple(error["loc"])), []).append(error)
    findings: list[Finding] = []
    for loc, errors in by_place.items():
        reasons = list(dict.fromkeys(describe_error(error, model, loc) for error in errors))
        if len(reasons) > 1 and all(_is_type_error(error) for error in errors):
            reasons = [_either(errors)]  # one error per member of a union type: say it once
        findings.extend(Finding(loc, reason) for reason in reasons)
    return findings


_EXPECTED = "Input should be "


def _is_type_error(error: ErrorDetails) -> bool:
    return error["msg"].startswith(_EXPECTED)


def _either(errors: list[ErrorDetails]) -> str:
    options = [error["msg"].removeprefix(_EXPECTED) for error in errors]
    listed = ", ".join(options[:-1]) + " or " + options[-1]
    return f"input should be {listed}, got {_describe_value(errors[0]['input'])}"


def describe_error(error: ErrorDetails, model: type[BaseModel], loc: Loc) -> str:
    """A reason phrased for someone editing the YAML file."""
    kind = error["type"]
    if kind == "missing":
        return f"missing required field {_name(loc)!r}"
    if kind == "extra_forbidden":
        allowed = allowed_fields(model, loc[:-1])
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"unknown field {_name(loc)!r}{hint}"
    message = error["msg"]
    if kind == "value_error":
        # Our own validators already name the value; drop pydantic's prefix.
        return message.removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    return f"{message}, got {_describe_value(error['input'])}"


def _name(loc: Loc) -> str:
    return str(loc[-1]) if loc else ""


def _describe_value(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool | int | float) or value is None:
        return "null" if value is None else repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if hasattr(value, "isoformat"):
        return f"{type(value).__name__} {value.isoformat()}"
    return type(value).__name__


def allowed_fields(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys the model expects at ``loc`` (empty when ``loc`` is not a model)."""
    target = _model_at(model, loc)
    if target is None:
        return []
    return [info.alias or name for name, info in target.model_fields.items()]


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    annotation: Any = model
    for part in loc:
        annotation = _unwrap(annotation)
        origin = typing.get_origin(annotation)
        if origin is list:
            annotation = typing.get_args(annotation)[0]
        elif origin is dict:
            annotation = typing.get_args(annotation)[1]
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields = {info.alias or name: info for name, info in annotation.model_fields.items()}
            if part not in fields:
                return None
            annotation = fields[part].annotation
        else:
            return None
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _unwrap(annotation: Any) -> Any:
    """``X | None`` and ``Annotated[X, ...]`` -> ``X``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    return annotation


def duplicates(values: Iterable[Any], what: str, prefix: Loc, suffix: Loc = ()) -> list[Finding]:
    """A finding at ``prefix[i]suffix`` for each value that repeats an earlier one."""
    findings = []
    first_seen: dict[Any, int] = {}
    for index, value in enumerate(values):
        key = (type(value), value)  # 1 and True are different codes
        if key in first_seen:
            where = format_path((*prefix, first_seen[key], *suffix))
            findings.append(Finding((*prefix, index, *suffix), f"{what} {value!r} repeats {where}"))
        else:
            first_seen[key] = index
    return findings
