"""The client's connections write a request, headers and body, in one write."""

from __future__ import annotations

import pytest
import urllib3.connection

from cftrunner.connections import one_write


class _Socket:
    """What a connection writes, one entry per write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.refuse: bytes | None = None  # a write holding this fails, as a reset connection's

    def sendall(self, data: bytes) -> None:
        if self.refuse is not None and self.refuse in data:
            raise ConnectionResetError("reset by peer")
        self.writes.append(bytes(data))

    def settimeout(self, _timeout: float | None) -> None:
        pass


@pytest.fixture(params=[urllib3.connection.HTTPConnection, urllib3.connection.HTTPSConnection])
def connection(request: pytest.FixtureRequest) -> urllib3.connection.HTTPConnection:
    conn = one_write(request.param)("api.example", 443)
    conn.sock = _Socket()  # type: ignore[assignment]
    return conn


def _writes(conn: urllib3.connection.HTTPConnection) -> list[bytes]:
    return conn.sock.writes  # type: ignore[union-attr, no-any-return]


def test_a_request_with_a_body_is_written_once_headers_first(
        connection: urllib3.connection.HTTPConnection) -> None:
    connection.request("POST", "/api/v1/traces", body=b'{"score": 0.5}',
                       headers={"Content-Type": "application/json"})
    [written] = _writes(connection)
    head, _, body = written.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /api/v1/traces HTTP/1.1\r\n")
    assert b"Content-Length: 14" in head
    assert body == b'{"score": 0.5}'


def test_the_next_request_on_the_connection_is_written_once_too(
        connection: urllib3.connection.HTTPConnection) -> None:
    connection.request("POST", "/a", body=b"1")
    connection._HTTPConnection__state = "Idle"  # type: ignore[attr-defined]  # as if answered
    connection._HTTPConnection__response = None  # type: ignore[attr-defined]
    connection.request("GET", "/b")
    first, second = _writes(connection)
    assert first.startswith(b"POST /a ") and first.endswith(b"\r\n\r\n1")
    assert second.startswith(b"GET /b ") and second.endswith(b"\r\n\r\n")


def test_a_request_whose_write_fails_leaves_no_headers_without_their_body(
        connection: urllib3.connection.HTTPConnection) -> None:
    connection.sock.refuse = b"BODY"  # type: ignore[union-attr]
    with pytest.raises(ConnectionResetError):
        connection.request("POST", "/a", body=b"BODY")
    assert _writes(connection) == []
