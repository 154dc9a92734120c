"""Running the gateway on uvicorn with the protections a slow or hostile client needs.

:func:`server_config` builds the :class:`uvicorn.Config` of ``bastion serve``:

- a **header timeout** (``server.header_timeout``): a connection that has not sent a whole
  request head that many seconds after it opened (or after a keep-alive request began) is
  answered ``408`` and closed, so partial headers cannot hold a connection (slowloris). The
  **body timeout** (``server.body_timeout``) is enforced by the gateway while it reads a body
  (:meth:`bastion.serve.pipeline.Gateway.read_body`, 408);
- a **connection limit** (``server.max_connections``, uvicorn's ``limit_concurrency``):
  beyond it new requests get ``503`` at once;
- an idle keep-alive timeout (``server.keep_alive_timeout``);
- no ``Server`` banner, no proxy headers trusted by uvicorn (the gateway itself trusts
  ``X-Forwarded-For`` only from ``server.trusted_proxies``);
- an access log that **never records query strings** (:class:`QueryRedactingFilter`): a
  secret put in the URL (``?api_key=...``) must not end up in log files.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bastion.serve.config import GatewayPolicy

__all__ = ["QueryRedactingFilter", "header_timeout_protocol", "server_config"]

_TIMEOUT_BODY = (b'{"error":"request_timeout","detail":"the request head was not received in '
                 b'time; resend it promptly"}')
_REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                    b"connection: close\r\ncontent-length: " + str(len(_TIMEOUT_BODY)).encode()
                    + b"\r\n\r\n" + _TIMEOUT_BODY)


class QueryRedactingFilter(logging.Filter):
    """Drops the query string from uvicorn's access log lines (``path?…`` is logged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) \
                and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?…", *args[3:])
        return True


def header_timeout_protocol(timeout: float) -> type[Any]:
    """uvicorn's httptools protocol, closing connections whose request head is late."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(timeout, self._head_late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.write(_REQUEST_TIMEOUT)
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def server_config(app: Any, policy: GatewayPolicy, *, log_level: str = "info") -> Any:
    """The :class:`uvicorn.Config` serving ``app`` under ``policy.server``."""
    import uvicorn

    s = policy.server
    config = uvicorn.Config(app, host=s.host, port=s.port, workers=1, server_header=False,
                            proxy_headers=False, log_level=log_level,
                            http=header_timeout_protocol(s.header_timeout),
                            limit_concurrency=s.max_connections,
                            timeout_keep_alive=max(1, round(s.keep_alive_timeout)))
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, QueryRedactingFilter) for f in access.filters):
        access.addFilter(QueryRedactingFilter())
    return config
