"""What every HTTP client shares (simulator, judge, trainer; sync and async).

- `Call`: one request as data (method, path, body, query, request id, idempotent);
- `HttpConfig`: base URL, API key header, timeouts, retry policy, request building;
- `exchange`: the retry loop (see `wmpo_client._driver`): 429/503 with backoff that
  honours `Retry-After`, calls lost in transit as the client allows, error mapping;
- `SyncHttp` / `AsyncHttp`: the connection pool, `with` / `async with`, sending and
  running an exchange, and readiness: the only places sync and async differ.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from wmpo_client._common import (
    API_KEY_HEADER,
    REQUEST_ID_HEADER,
    RETRY_HTTP_STATUSES,
    RetryPolicy,
    parse_retry_after,
)
from wmpo_client._driver import Exchange, run_async, run_sync
from wmpo_client.errors import CODE_BY_HTTP_STATUS, SimulatorError
from wmpo_client.results import HealthStatus

T = TypeVar("T")
S = TypeVar("S")
READINESS_PATH = "/readyz"


def error_from_response(response: httpx.Response) -> SimulatorError:
    """The `SimulatorError` for a non-2xx response whose body has been read.

    The service's body is `{"error": {"code", "message", "request_id"}}`; any
    other body (a proxy's page) keeps a code derived from the status.
    """
    status = response.status_code
    code = CODE_BY_HTTP_STATUS.get(status, "INTERNAL" if status >= 500 else f"HTTP_{status}")
    message = response.reason_phrase or f"HTTP {status}"
    request_id = response.headers.get(REQUEST_ID_HEADER)
    try:
        data = response.json()
    except ValueError:
        text = response.text.strip()
        if text:
            message = text[:300]
    else:
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            code = str(err.get("code") or code)
            message = str(err.get("message") or message)
            request_id = err.get("request_id") or request_id
    return SimulatorError(code, message, request_id, http_status=status)


def error_from_event(event: dict[str, Any]) -> SimulatorError:
    """The `SimulatorError` of an in-band "error" event of an NDJSON stream (after a 200)."""
    err = event.get("error") or {}
    return SimulatorError(
        str(err.get("code") or "INTERNAL"),
        str(err.get("message") or "the stream failed"),
        err.get("request_id"),
        http_status=200,
    )


def health_from_response(response: httpx.Response) -> HealthStatus:
    """`/readyz`: 200 is ready, 503 not ready (with a reason); anything else is an error."""
    if response.status_code not in (200, 503):
        raise error_from_response(response)
    try:
        data = response.json()
    except ValueError:
        data = {}
    reason = str(data.get("reason", "")) if isinstance(data, dict) else ""
    return HealthStatus(ready=response.status_code == 200, reason=reason)


@dataclass(frozen=True)
class Call:
    """One request. `idempotent`: safe to re-send after a timeout or a lost connection."""

    method: str
    path: str
    body: dict[str, Any] | None = None
    request_id: str = ""
    idempotent: bool = False
    params: dict[str, Any] | None = None


def exchange(
    retry: RetryPolicy,
    transport_error: Callable[[httpx.HTTPError], SimulatorError],
    *,
    resend_lost: bool,
    resend_timeouts: bool,
) -> Exchange[httpx.Response]:
    """Send; retry 429/503 with backoff; map failures; return the 2xx response.

    `resend_lost`: re-send a call lost in transit (a failed connection, a keep-alive
    connection the server closed as the request left); `resend_timeouts`: a timed-out
    one too. The sender has read an error response's body before it comes back here.
    """
    attempt = 0
    while True:
        try:
            response: httpx.Response = yield None
        except httpx.TransportError as exc:
            timed_out = isinstance(exc, httpx.TimeoutException)
            resend = resend_lost and (resend_timeouts or not timed_out)
            if resend and attempt < retry.retries:
                yield retry.delay(attempt)
                attempt += 1
                continue
            raise transport_error(exc) from exc
        except httpx.HTTPError as exc:
            raise transport_error(exc) from exc
        if response.status_code in RETRY_HTTP_STATUSES and attempt < retry.retries:
            yield retry.delay(attempt, parse_retry_after(response.headers.get("retry-after")))
            attempt += 1
            continue
        if not response.is_success:
            raise error_from_response(response)
        return response


class HttpConfig:
    """Configuration shared by an HTTP client's sync and async classes."""

    service = "service"  # named in the messages of calls that did not reach it

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: httpx.Timeout,
        retries: int,
        backoff: float,
        max_backoff: float,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = RetryPolicy(retries, backoff, max_backoff)
        self._timeout = timeout
        self._headers = {API_KEY_HEADER: api_key} if api_key else {}

    def _transport_error(self, exc: httpx.HTTPError) -> SimulatorError:
        where = f"the {self.service} at {self.base_url}"
        if isinstance(exc, httpx.TimeoutException):
            return SimulatorError("DEADLINE_EXCEEDED", f"no answer from {where} in time ({exc!r})")
        return SimulatorError("UNAVAILABLE", f"cannot reach {where} ({exc!r})")

    def _exchange(self, call: Call) -> Exchange[httpx.Response]:
        """The retry loop for `call`; by default a call lost in transit is re-sent
        (timeouts included) only when it is idempotent."""
        return exchange(
            self.retry,
            self._transport_error,
            resend_lost=call.idempotent,
            resend_timeouts=call.idempotent,
        )

    def _request(self, http: httpx.Client | httpx.AsyncClient, call: Call) -> httpx.Request:
        # The request id header ties the server's logs (and error bodies) to this call.
        headers = {REQUEST_ID_HEADER: call.request_id} if call.request_id else {}
        return http.build_request(
            call.method, call.path, json=call.body, params=call.params, headers=headers
        )


class SyncHttp(HttpConfig):
    """The blocking half: an httpx.Client, `with`, sending and running exchanges."""

    def _open(self, transport: httpx.BaseTransport | None, retries: int) -> None:
        # httpx's transport retries failed connections (the request never left).
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=self._headers,
            timeout=self._timeout,
            transport=transport or httpx.HTTPTransport(retries=retries),
        )

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _send(self, request: httpx.Request, stream: bool = False) -> httpx.Response:
        """A stream's 2xx response is left open for the caller; other bodies are read."""
        response = self._http.send(request, stream=stream)
        if stream and not response.is_success:
            try:
                response.read()
            finally:
                response.close()
        return response

    def _run(self, call: Call, parse: Callable[[httpx.Response], T], stream: bool = False) -> T:
        request = self._request(self._http, call)
        return parse(run_sync(self._exchange(call), lambda: self._send(request, stream)))

    def _lines(self, call: Call) -> Iterator[str]:
        """The lines of a streamed response (NDJSON), transport errors as `SimulatorError`;
        the response is closed however iteration ends (close the iterator to close it at once)."""
        response = self._run(call, lambda r: r, stream=True)
        try:
            yield from response.iter_lines()
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        finally:
            response.close()

    def health(self) -> HealthStatus:
        """Readiness (no API key needed, no retries: "not ready" is an answer)."""
        try:
            response = self._http.get(READINESS_PATH)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        return health_from_response(response)


class AsyncHttp(HttpConfig):
    """The async half: an httpx.AsyncClient, `async with`, sending and running exchanges."""

    def _open(self, transport: httpx.AsyncBaseTransport | None, retries: int) -> None:
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._headers,
            timeout=self._timeout,
            transport=transport or httpx.AsyncHTTPTransport(retries=retries),
        )

    async def __aenter__(self: S) -> S:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _send(self, request: httpx.Request, stream: bool = False) -> httpx.Response:
        """See `SyncHttp._send`."""
        response = await self._http.send(request, stream=stream)
        if stream and not response.is_success:
            try:
                await response.aread()
            finally:
                await response.aclose()
        return response

    async def _run(
        self, call: Call, parse: Callable[[httpx.Response], T], stream: bool = False
    ) -> T:
        request = self._request(self._http, call)
        return parse(await run_async(self._exchange(call), lambda: self._send(request, stream)))

    async def _lines(self, call: Call) -> AsyncIterator[str]:
        """See `SyncHttp._lines`; consume it inside `contextlib.aclosing`."""
        response = await self._run(call, lambda r: r, stream=True)
        try:
            async for line in response.aiter_lines():
                yield line
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        finally:
            await response.aclose()

    async def health(self) -> HealthStatus:
        """Readiness (no API key needed, no retries: "not ready" is an answer)."""
        try:
            response = await self._http.get(READINESS_PATH)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        return health_from_response(response)
