"""The lab's own RabbitMQ node: a port lost between choosing and binding is chosen again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab import rabbitmq
from lab.errors import StackError
from lab.procs import free_port
from tests.support import squatted_port

try:
    rabbitmq.require_rabbitmq()
    MISSING = ""
except StackError as exc:
    MISSING = str(exc)

pytestmark = [pytest.mark.stack, pytest.mark.skipif(bool(MISSING), reason=MISSING)]


def test_a_node_port_taken_between_choosing_and_binding_is_chosen_again(tmp_path: Path, monkeypatch) -> None:
    with squatted_port() as port:
        picks = iter([free_port(), port])  # epmd's port, then the AMQP listener's, which another process holds
        monkeypatch.setattr(rabbitmq, "free_port", lambda host="127.0.0.1": next(picks, None) or free_port(host))
        node = rabbitmq.start_rabbitmq(tmp_path / "data", tmp_path / "logs", dict(os.environ))
    try:
        assert node.amqp_port != port
        assert rabbitmq.amqp_ready(node.amqp_port)
        log = (tmp_path / "logs" / "rabbitmq.log").read_text(errors="replace").lower()
        assert "eaddrinuse" in log or "address already in use" in log  # the lost race happened
    finally:
        node.server.stop(timeout=10)
        node.epmd.stop(timeout=2)
