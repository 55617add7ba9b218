"""The filters every analysis takes: a time range and a facility."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Query
from pydantic import BaseModel, model_validator

from shared.errors import ApiError
from shared.event_vocabulary import MAX_LENGTH, parse_timestamp, text_problem


class EventFilter(BaseModel):
    start: datetime | None = None
    end: datetime | None = None
    facility_id: str | None = None

    @model_validator(mode="after")
    def _ordered(self) -> EventFilter:
        if self.start and self.end and self.start > self.end:
            raise ValueError("start must not be after end")
        return self

    def where(self, first_param: int = 1) -> tuple[str, list[Any]]:
        """SQL WHERE clause (with leading keyword, or empty) and its parameters."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, op, value in (
            ("time", ">=", self.start),
            ("time", "<", self.end),
            ("facility_id", "=", self.facility_id),
        ):
            if value is not None:
                params.append(value)
                clauses.append(f"{column} {op} ${first_param + len(params) - 1}")
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _invalid(name: str, problem: object) -> ApiError:
    return ApiError(422, f"query parameter {name!r}: {problem}", details={"loc": f"query.{name}"})


def _parse_optional_time(value: str | None, name: str) -> datetime | None:
    """Any instant the vocabulary can parse (no event window: a query may reach past it)."""
    if value is None or value == "":
        return None
    try:
        return parse_timestamp(value)
    except ValueError as exc:  # parse_timestamp raises nothing else, overflow included
        raise _invalid(name, exc) from None


def event_filter(
    start: Annotated[str | None, Query(description="ISO 8601 or epoch ms; inclusive")] = None,
    end: Annotated[str | None, Query(description="ISO 8601 or epoch ms; exclusive")] = None,
    facility_id: Annotated[str | None, Query(max_length=MAX_LENGTH["facility_id"])] = None,
) -> EventFilter:
    if facility_id and (problem := text_problem(facility_id)):
        raise _invalid("facility_id", problem)
    try:
        return EventFilter(
            start=_parse_optional_time(start, "start"),
            end=_parse_optional_time(end, "end"),
            facility_id=facility_id or None,
        )
    except ValueError as exc:
        raise ApiError(422, f"invalid filter: {exc}") from None


Filters = Annotated[EventFilter, Depends(event_filter)]
