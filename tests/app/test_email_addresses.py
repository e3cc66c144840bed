"""Addresses and subjects the API accepts are exactly what smtplib sends (pure: smtplib talks to a recorder).

The old schema was a loose regex: ``a,b@example.com`` went to two recipients, control characters and
encoded words reached the To header, and a subject with CR LF broke every message of its group. Here every
address the schema accepts must come out of the real ``EmailService`` + ``smtplib`` code as one envelope
recipient and one To address, both equal to the stored value.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import smtplib
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.core.config import settings_from
from app.schemas.api import GroupRequest, UserCreate
from app.services.email import EmailService

_RealSMTP = smtplib.SMTP


class RecordingSMTP(_RealSMTP):
    """smtplib's own client code with the socket replaced: every command is recorded, every reply is OK."""

    sent: list[RecordingSMTP] = []

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        super().__init__()  # no host: smtplib does not connect
        self.commands: list[tuple[str, str]] = []
        self.payload = b""
        self._last = ""
        RecordingSMTP.sent.append(self)

    def putcmd(self, cmd: str, args: str = "") -> None:
        self.commands.append((cmd, args))
        self._last = cmd.lower()

    def getreply(self) -> tuple[int, bytes]:
        last, self._last = self._last, ""
        return {"data": (354, b"go ahead"), "quit": (221, b"bye")}.get(last, (250, b"ok"))

    def send(self, s: bytes | str) -> None:
        self.payload += s if isinstance(s, bytes) else s.encode()

    def close(self) -> None:
        pass

    def recipients(self) -> list[str]:
        return [args.removeprefix("TO:") for cmd, args in self.commands if cmd == "rcpt"]


def sent_to(address: str, subject: str = "Welcome!") -> tuple[list[str], list[tuple[str, str]], str]:
    """(RCPT TO arguments, the To header's addresses, the Subject) of one message sent by the app's service."""
    RecordingSMTP.sent.clear()
    service = EmailService(settings_from({}))
    with mock.patch.object(smtplib, "SMTP", RecordingSMTP):
        service._send(address, subject, "Thanks for signing up.")
    (smtp,) = RecordingSMTP.sent
    msg = email.message_from_bytes(smtp.payload, policy=email.policy.default)
    return smtp.recipients(), email.utils.getaddresses(msg.get_all("To", [])), str(msg["Subject"])


# What addresses are made of, plus what breaks them: separators, quotes, brackets, controls, encoded words.
ATEXT = "abcXYZ019!#$%&'*+-/=?^_`{|}~."
HOSTILE = ',;:<>()[]"\\ @\x00\x07\x0b\x1e\x7f\r\n\t\u2028é=?'
DOMAINS = ["example.com", "Example.COM", "sub.example.org", "bücher.de", "example.com,b@evil.example", "ex ample.com"]
local_parts = st.text(alphabet=st.sampled_from(ATEXT + HOSTILE), min_size=1, max_size=24)
addresses = st.one_of(
    st.emails(),
    st.builds(lambda local, domain: f"{local}@{domain}", local_parts, st.sampled_from(DOMAINS)),
    st.text(max_size=40),
)


@settings(max_examples=400, deadline=None)
@given(addresses)
def test_an_accepted_address_is_sent_to_exactly_itself(raw: str) -> None:
    try:
        stored = UserCreate(email=raw, name="n").email
    except ValidationError as exc:
        assert [err["loc"] for err in exc.errors()] == [("email",)]
        return
    rcpts, to_header, _ = sent_to(stored)
    assert rcpts == [f"<{stored}>"], (raw, stored)
    assert to_header == [("", stored)], (raw, stored)


@pytest.mark.parametrize(
    "tricky",
    ["o'brien@example.com", "a+tag@example.com", "x{y}|z~@example.com", "a.b-c_d@sub.example.org", "%!#$&*@a.example"],
)
def test_tricky_but_valid_addresses_are_accepted_unchanged(tricky: str) -> None:
    assert UserCreate(email=tricky, name="n").email == tricky
    assert sent_to(tricky)[:2] == ([f"<{tricky}>"], [("", tricky)])


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("Ada@Example.COM", "Ada@example.com"),  # the domain is case-insensitive, the local part is not
        (" ada@example.com ", "ada@example.com"),
        ("a@bücher.de", "a@xn--bcher-kva.de"),  # IDNA: what a relay without SMTPUTF8 takes
    ],
)
def test_what_is_stored_is_the_normalized_ascii_form(raw: str, stored: str) -> None:
    assert UserCreate(email=raw, name="n").email == stored


@pytest.mark.parametrize(
    "bad",
    [
        "a,b@example.com",  # delivered to two recipients
        "a\x00b@example.com",
        "a\x07b@example.com",
        "a\x7fb@example.com",
        "a\x1eb@example.com",
        "a@example.com\r\nBcc: x@example.com",
        "<a@example.com>",
        "Ada <a@example.com>",
        '"a b"@example.com',
        '"a"@example.com',
        'a"b@example.com',
        "=?utf-8?q?x?=@example.com",  # a header parser reads x@example.com
        "ñ@example.com",  # needs SMTPUTF8, which smtplib cannot count on
        "a@[127.0.0.1]",
        "a..b@example.com",
        "a@localhost",
    ],
)
def test_addresses_that_break_delivery_are_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        UserCreate(email=bad, name="n")
    assert [err["loc"] for err in info.value.errors()] == [("email",)]


@pytest.mark.parametrize(
    "bad",
    ["Hi\r\nBcc: x@example.com", "Hi\n", "\rHi", "a\x00b", "a\tb", "a\x1eb", "a\x7f", "a\u2028b", "=?utf-8?q?x?= y"],
)
def test_subjects_that_break_the_header_are_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        GroupRequest(user_ids=[1], subject=bad, body="b")
    assert [err["loc"] for err in info.value.errors()] == [("subject",)]


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=200))
def test_an_accepted_subject_arrives_as_sent(raw: str) -> None:
    try:
        subject = GroupRequest(user_ids=[1], subject=raw, body="b").subject
    except ValidationError as exc:
        assert [err["loc"] for err in exc.errors()] == [("subject",)]
        return
    assert sent_to("ada@example.com", subject)[2] == subject
