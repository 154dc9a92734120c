"""The gateway behind real uvicorn on 127.0.0.1 (``bastion.serve.server``): a late request
head is cut off with 408, connections beyond the limit get 503, and the access log never
records a query string."""

from __future__ import annotations

import logging
import socket
import time

import httpx

from bastion.serve.server import QueryRedactingFilter


def _recv_all(sock: socket.socket) -> bytes:
    sock.settimeout(20)  # a bound, not a timing assertion: the server answers long before
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


def test_a_request_head_that_never_completes_gets_408_and_is_closed(live):
    _, port = live
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")  # never ends
        answer = _recv_all(sock)  # returns because the server closed the connection
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"request_timeout" in answer


def test_connections_beyond_the_limit_get_503(live):
    _, port = live
    idle = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(3)]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            answer = _recv_all(sock)
        assert answer.startswith(b"HTTP/1.1 503")
    finally:
        for s in idle:
            s.close()


def test_the_access_log_never_records_query_strings(live):
    token, port = live
    seen: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    grab = Grab()
    access = logging.getLogger("uvicorn.access")
    access.addHandler(grab)
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/v1/models?api_key={token}",
                      headers={"Host": "localhost"}, timeout=20)
        assert r.status_code == 401
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        access.removeHandler(grab)
    assert seen and "/v1/models?…" in seen[0]
    assert not [line for line in seen if token in line or "api_key" in line]


def test_the_redacting_filter_keeps_paths_and_drops_queries():
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                               '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", "/x?api_key=SECRET", "1.1", 401), None)
    QueryRedactingFilter().filter(record)
    assert record.getMessage() == '127.0.0.1:5 - "GET /x?… HTTP/1.1" 401'
