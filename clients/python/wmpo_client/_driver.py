"""One retry loop for the sync and the async client of a service (sans-IO).

A client method describes its call as an *exchange*: a generator that yields
`None` to have the request sent (the driver sends back the response, or throws
the transport's exception into the generator) and yields a number of seconds
to have the driver sleep before trying again; its return value is the result.
Retry decisions, error mapping and parsing then live once in the exchange, and
the sync and async clients differ only in which driver runs it (`run_sync`
with a blocking send and `time.sleep`, `run_async` with an awaitable send and
`asyncio.sleep`). The exchanges of every client are `wmpo_client._http.exchange`
and `wmpo_client._grpc.exchange`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

T = TypeVar("T")
# Yields None ("send now") or a delay in seconds; receives the reply; returns the result.
Exchange = Generator[float | None, Any, T]


def run_sync(exchange: Exchange[T], send: Callable[[], Any]) -> T:
    """Run `exchange`, calling `send()` whenever it asks for the request to go out."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = exchange.send(reply) if error is None else exchange.throw(error)
        except StopIteration as stop:
            return stop.value
        reply, error = None, None
        if step is None:
            try:
                reply = send()
            except Exception as exc:  # the exchange decides: retry, map or re-raise
                error = exc
        else:
            time.sleep(step)


async def run_async(exchange: Exchange[T], send: Callable[[], Awaitable[Any]]) -> T:
    """`run_sync` for an async client: `send()` returns an awaitable."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = exchange.send(reply) if error is None else exchange.throw(error)
        except StopIteration as stop:
            return stop.value
        reply, error = None, None
        if step is None:
            try:
                reply = await send()
            except Exception as exc:
                error = exc
        else:
            await asyncio.sleep(step)
