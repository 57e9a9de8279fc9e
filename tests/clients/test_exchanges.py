"""The retry loops every client shares (`wmpo_client._http.exchange`, `wmpo_client._grpc.exchange`),
driven by hand: no service, no sockets; the sync and the async driver run the same exchange."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import httpx
import pytest
from wmpo_client._common import RetryPolicy
from wmpo_client._driver import run_async, run_sync
from wmpo_client._grpc import exchange as grpc_exchange
from wmpo_client._http import exchange as http_exchange
from wmpo_client.errors import SimulatorError

NO_WAIT = RetryPolicy(retries=2, backoff=0.0)
OK = httpx.Response(200, json={})
BUSY = httpx.Response(429, headers={"retry-after": "0"})


def scripted(*replies: Any) -> tuple[list[Any], Any]:
    """A send that answers with `replies` in turn (an exception is raised)."""
    sent: list[Any] = []

    def send() -> Any:
        reply = replies[len(sent)]
        sent.append(reply)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    return sent, send


def lost(exc: httpx.HTTPError) -> SimulatorError:
    return SimulatorError("UNAVAILABLE", repr(exc))


def test_http_exchange_retries_refusals_then_gives_up_with_the_servers_error() -> None:
    sent, send = scripted(BUSY, BUSY, OK)
    exchange = http_exchange(NO_WAIT, lost, resend_lost=False, resend_timeouts=False)
    assert run_sync(exchange, send) is OK and len(sent) == 3

    sent, send = scripted(BUSY, BUSY, BUSY)
    exchange = http_exchange(NO_WAIT, lost, resend_lost=False, resend_timeouts=False)
    with pytest.raises(SimulatorError) as err:
        run_sync(exchange, send)
    assert err.value.code == "RESOURCE_EXHAUSTED" and err.value.http_status == 429
    assert len(sent) == 3  # 1 try + 2 retries

    sent, send = scripted(BUSY, OK)

    async def asend() -> Any:
        return send()

    exchange = http_exchange(NO_WAIT, lost, resend_lost=False, resend_timeouts=False)
    assert asyncio.run(run_async(exchange, asend)) is OK and len(sent) == 2


@pytest.mark.parametrize(
    ("resend_lost", "resend_timeouts", "failure", "tries"),
    [
        (False, False, httpx.ReadError("dropped"), 1),  # a simulator call that is not idempotent
        (True, True, httpx.ReadTimeout("slow"), 2),  # an idempotent step, a trainer read
        (True, False, httpx.ReadError("dropped"), 2),  # the judge: lost calls are re-sent
        (True, False, httpx.ReadTimeout("slow"), 1),  # ... but not timed-out ones
    ],
)
def test_http_exchange_resends_a_lost_call_only_when_allowed(
    resend_lost: bool, resend_timeouts: bool, failure: httpx.HTTPError, tries: int
) -> None:
    sent, send = scripted(failure, OK)
    exchange = http_exchange(
        NO_WAIT, lost, resend_lost=resend_lost, resend_timeouts=resend_timeouts
    )
    if tries == 2:
        assert run_sync(exchange, send) is OK
    else:
        with pytest.raises(SimulatorError, match="UNAVAILABLE"):
            run_sync(exchange, send)
    assert len(sent) == tries


class RpcFailure(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-request-id", "r1"),)


@pytest.mark.parametrize(
    ("failure", "idempotent", "tries"),
    [
        (RpcFailure(grpc.StatusCode.UNAVAILABLE), False, 2),
        (RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy"), False, 2),
        # grpcio's own size limit shares the code; re-sending cannot help.
        (RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, "message larger than max"), False, 1),
        (RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED), False, 1),
        (RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED), True, 2),  # an idempotent step
        (RpcFailure(grpc.StatusCode.NOT_FOUND, "no session"), True, 1),
    ],
)
def test_grpc_exchange_retries_transient_codes_only(
    failure: RpcFailure, idempotent: bool, tries: int
) -> None:
    sent, send = scripted(failure, "reply")
    exchange = grpc_exchange(NO_WAIT, idempotent)
    if tries == 2:
        assert run_sync(exchange, send) == "reply"
    else:
        with pytest.raises(SimulatorError) as err:
            run_sync(exchange, send)
        assert err.value.code == failure.code().name == err.value.grpc_status
        assert err.value.request_id == "r1"
    assert len(sent) == tries
