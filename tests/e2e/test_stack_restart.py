"""`make up` is idempotent: whatever died comes back, and only that."""

from __future__ import annotations

import signal

from tests.stack import Stack, answers, load_native_stack, restore


def pids() -> dict[str, int | None]:
    """Every running part of the private stack (pid checked against its start time)."""
    native = load_native_stack()
    return {name: native.running_pid(name) for name in native.names()}


def test_up_brings_back_a_killed_nginx_master_and_nothing_else(stack: Stack) -> None:
    """NGINX's workers outlive a SIGKILLed master and keep holding the port; ``up`` must stop
    them and start NGINX again, leaving every other process as it was."""
    live_members_of_session = load_native_stack().session_members
    before = pids()
    assert None not in before.values(), before
    stack.signal_part("nginx", signal.SIGKILL)
    assert live_members_of_session(before["nginx"])  # the orphaned workers

    restore()

    after = pids()
    assert after["nginx"] != before["nginx"]
    assert live_members_of_session(before["nginx"]) == []
    assert len(live_members_of_session(after["nginx"])) >= 2  # a master and its workers
    assert {k: v for k, v in after.items() if k != "nginx"} == \
        {k: v for k, v in before.items() if k != "nginx"}
    assert answers(f"{stack.http_url}/nginx-healthz")
