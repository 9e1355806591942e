"""Notification tickets: signed with a key derived from the admin token, short-lived."""

from __future__ import annotations

from api.tickets import TICKET_TTL_MS, issue_ticket, ticket_is_valid

NOW = 1_767_225_600_000


def test_a_ticket_is_valid_until_it_expires() -> None:
    ticket = issue_ticket("token", NOW)
    assert ticket_is_valid("token", ticket, NOW)
    assert ticket_is_valid("token", ticket, NOW + TICKET_TTL_MS - 1)
    assert not ticket_is_valid("token", ticket, NOW + TICKET_TTL_MS)


def test_a_ticket_from_another_token_or_altered_is_refused() -> None:
    ticket = issue_ticket("token", NOW)
    assert not ticket_is_valid("other", ticket, NOW)
    version, expires, nonce, signature = ticket.split(".")
    longer = f"{version}.{int(expires) + 10**9}.{nonce}.{signature}"
    assert not ticket_is_valid("token", longer, NOW + TICKET_TTL_MS)
    for bad in ("", ".", "t1...", "t1.x.y.z", signature, ticket + "x"):
        assert not ticket_is_valid("token", bad, NOW)


def test_tickets_differ_and_do_not_contain_the_token() -> None:
    first, second = issue_ticket("s3cret-token", NOW), issue_ticket("s3cret-token", NOW)
    assert first != second
    assert "s3cret" not in first
