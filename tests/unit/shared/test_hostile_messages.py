"""Every hostile message gets a verdict from the parser: an event, or a reason to dead-letter it."""

from __future__ import annotations

import pytest

from shared.events import AccessEvent, EventParseError, event_record, parse_event_bytes
from tests.hostile import EITHER, STORED, Hostile, hostile_messages

CORPUS = hostile_messages()


def verdict(message: Hostile) -> tuple[str, AccessEvent | None]:
    """(STORED, event) or (dead-letter reason, None); anything else raised fails the test."""
    try:
        return STORED, parse_event_bytes(message.value or b"")
    except EventParseError as exc:
        return exc.reason, None


@pytest.mark.parametrize("message", CORPUS, ids=[m.name for m in CORPUS])
def test_every_hostile_message_is_parsed_or_refused_with_a_reason(message: Hostile) -> None:
    outcome, event = verdict(message)
    if message.expect != EITHER:
        assert outcome == message.expect
    if event is not None:
        # Accepted: then it can be stored and sent on as it is.
        event_record(event)
        assert parse_event_bytes(event.to_wire()).event_id == event.event_id
