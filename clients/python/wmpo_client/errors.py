"""The one exception every client raises for a failed call: `SimulatorError`.

HTTP and gRPC failures carry the same `code` strings (the service's error
model: INVALID_ARGUMENT, UNAUTHENTICATED, NOT_FOUND, FAILED_PRECONDITION,
PAYLOAD_TOO_LARGE, RESOURCE_EXHAUSTED, UNAVAILABLE, CANCELLED, INTERNAL, ...), so code that
handles errors does not depend on the transport. Failures that never reached
the service (connection refused, deadline passed) use the gRPC names
UNAVAILABLE and DEADLINE_EXCEEDED with neither status set.
"""

from __future__ import annotations

# HTTP statuses without the service's JSON error body (a proxy, a load balancer).
CODE_BY_HTTP_STATUS: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "DEADLINE_EXCEEDED",
    409: "FAILED_PRECONDITION",
    413: "PAYLOAD_TOO_LARGE",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class SimulatorError(Exception):
    """A call to the simulator failed.

    Attributes:
        code: the service's error code, e.g. "NOT_FOUND" (the same over HTTP and gRPC).
        message: what is wrong, as the server said it.
        request_id: the id to quote when reporting the failure (None if unknown).
        http_status: the HTTP status (HTTP clients only).
        grpc_status: the gRPC status code name, e.g. "NOT_FOUND" (gRPC clients only).
    """

    def __init__(
        self,
        code: str,
        message: str,
        request_id: str | None = None,
        *,
        http_status: int | None = None,
        grpc_status: str | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.request_id = request_id or None
        self.http_status = http_status
        self.grpc_status = grpc_status
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" (request id {self.request_id})" if self.request_id else ""
        return f"{self.code}: {self.message}{where}"

    def __repr__(self) -> str:
        return (
            f"SimulatorError(code={self.code!r}, message={self.message!r}, "
            f"request_id={self.request_id!r}, http_status={self.http_status!r}, "
            f"grpc_status={self.grpc_status!r})"
        )
