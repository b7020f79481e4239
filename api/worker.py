"""A gunicorn worker that serves with waitress: whole requests are read before a thread sees them.

Gunicorn's own workers give each connection a thread (or the process) while its request arrives,
so a few clients that send slowly hold every thread. Here the gunicorn arbiter still forks,
watches and restarts the workers, while inside each worker waitress reads every connection on one
event loop and hands a request to the thread pool only once its head and body are complete. What a
slow client costs is a socket and its buffer, and a connection is dropped when its request head has
not arrived within ``header_timeout`` seconds (from connecting, or from the previous answer) or its
body within ``body_timeout`` seconds after the head. Bodies over the upload limit get a JSON 413
however they are framed, malformed ones a JSON 400, both before the app runs.

On SIGTERM the worker stops listening, closes idle connections, lets requests that have arrived
finish (within gunicorn's ``graceful_timeout``) and exits 0.

``gunicorn --worker-class saliency.api.worker.WaitressWorker saliency.api.wsgi:app``
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from gunicorn.workers.base import Worker
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer, UnixWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher

from saliency.api.config import Settings

log = logging.getLogger("saliency.api")

#: Largest request head (request line and header fields) read into memory.
MAX_HEAD_BYTES = 64 * 1024
#: Seconds between checks of each connection's deadlines (the granularity of the timeouts).
CHECK_INTERVAL = 0.5


class JSONErrorTask(ErrorTask):
    """Waitress's answer to a request it refuses (too large, malformed), as the API's JSON error."""

    def execute(self) -> None:
        error = self.request.error
        limit = self.channel.adj.max_request_body_size
        if error.code == 413:
            detail = (f"the request body is larger than this server accepts ({limit / 1024 / 1024:.3g} MB), "
                      "however it is sent; send a smaller image")
        elif error.code == 431:
            detail = (f"the request head is larger than this server reads ({MAX_HEAD_BYTES // 1024} kB); "
                      "send fewer or shorter header fields")
        else:
            detail = f"the request is malformed ({error.body}); send a well-formed HTTP request"
        code = error.reason.lower().replace(" ", "_")
        body = json.dumps({"error": code, "detail": detail}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.extend([("Content-Type", "application/json"),
                                      ("X-Content-Type-Options", "nosniff")])
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class DeadlineChannel(HTTPChannel):
    error_task_class = JSONErrorTask


class _Deadlines:
    """Server mixin: drop connections whose request head or body is late (checked every ``cleanup_interval``)."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    channel_class = DeadlineChannel

    def maintenance(self, now: float) -> None:
        arrivals = self.__dict__.setdefault("_arrivals", weakref.WeakKeyDictionary())
        for channel in list(self.active_channels.values()):
            if channel.requests or channel.will_close or channel.total_outbufs_len:
                continue  # being answered: the app's time, not the client's
            request = channel.request
            if request is None:  # nothing of a request yet (new, or idle between requests)
                if now - channel.last_activity > self.header_timeout:
                    channel.will_close = True
                continue
            seen = arrivals.setdefault(request, [now, None])
            if request.headers_finished and seen[1] is None:
                seen[1] = now
            late = (now - seen[0] > self.header_timeout if seen[1] is None
                    else now - seen[1] > self.body_timeout)
            if late:
                part = "head" if seen[1] is None else "body"
                log.info("dropped a connection from %s: its request %s did not arrive in time",
                         channel.addr[0] if isinstance(channel.addr, tuple) else channel.addr, part)
                channel.will_close = True


class _TcpServer(_Deadlines, TcpWSGIServer):
    pass


class _UnixServer(_Deadlines, UnixWSGIServer):
    pass


class WaitressWorker(Worker):
    """Gunicorn worker running waitress on the sockets the arbiter bound (see the module docstring)."""

    def run(self) -> None:
        settings = self._settings()
        # waitress warns on every request that waits for a thread; the batcher's metrics say that better
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        dispatcher = ThreadedTaskDispatcher()
        dispatcher.set_thread_count(self.cfg.threads)
        socket_map: dict[int, Any] = {}
        options = dict(
            threads=self.cfg.threads, connection_limit=self.cfg.worker_connections, backlog=self.cfg.backlog,
            channel_timeout=settings.header_timeout, cleanup_interval=CHECK_INTERVAL,
            max_request_body_size=settings.max_upload_bytes, max_request_header_size=MAX_HEAD_BYTES,
            ident="saliency", asyncore_use_poll=True, url_scheme="http",
        )
        from waitress.adjustments import Adjustments  # noqa: PLC0415 (only a worker needs it)
        sockets = [s.sock for s in self.sockets]
        adj = Adjustments(sockets=sockets, **options)
        app = self._logged(self.wsgi)
        servers = []
        for sock in sockets:
            kind = _UnixServer if sock.family == getattr(socket, "AF_UNIX", None) else _TcpServer
            server = kind(app, socket_map, _start=True, _sock=sock, dispatcher=dispatcher, adj=adj,
                          bind_socket=False, sockinfo=(sock.family, sock.type, sock.proto, sock.getsockname()))
            server.header_timeout, server.body_timeout = settings.header_timeout, settings.body_timeout
            servers.append(server)
        while self.alive:
            self.notify()
            if self.ppid != os.getppid():
                self.log.info("parent changed, shutting down: %s", self)
                break
            wasyncore.loop(timeout=CHECK_INTERVAL, map=socket_map, use_poll=True, count=1)
        self._drain(servers, socket_map, dispatcher)

    def _drain(self, servers: list, socket_map: dict, dispatcher: ThreadedTaskDispatcher) -> None:
        """Stop listening; answer what has arrived (within graceful_timeout), closing idle connections."""
        for server in servers:
            server.accepting = False
            server.del_channel()
            server.socket.close()
        deadline = time.monotonic() + max(self.cfg.graceful_timeout - 1.0, 0.5)
        while time.monotonic() < deadline:
            self.notify()
            servers[0].maintenance(time.time())  # the head and body deadlines still hold
            busy = False
            for channel in [c for s in servers for c in list(s.active_channels.values())]:
                if channel.requests or channel.total_outbufs_len or channel.request is not None:
                    busy = True
                elif not channel.will_close:  # idle, its answers sent: close it
                    channel.will_close = True
            if not busy:
                break
            wasyncore.loop(timeout=0.2, map=socket_map, use_poll=True, count=1)
        unfinished = sum(1 for s in servers for c in s.active_channels.values() if c.requests)
        if unfinished:
            self.log.warning("graceful timeout: %d request(s) cut at shutdown", unfinished)
        wasyncore.loop(timeout=0.1, map=socket_map, use_poll=True, count=1)  # flush the last closes
        dispatcher.shutdown(cancel_pending=True, timeout=1)
        wasyncore.close_all(socket_map)

    def _settings(self) -> Settings:
        """The app's own settings (limits and deadlines), or the defaults for another WSGI app."""
        state = getattr(self.wsgi, "extensions", {}).get("saliency")
        return getattr(state, "settings", None) or Settings()

    def _logged(self, app: Callable) -> Callable:
        """``app`` writing gunicorn's access log line for each answer."""
        def logged(environ: dict[str, Any], start_response: Callable) -> Iterator[bytes]:
            started = time.monotonic()
            answer = SimpleNamespace(status="500", headers=[], sent=0)

            def respond(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable:
                answer.status, answer.headers = status, headers
                return start_response(status, headers, exc_info)

            body: Iterable[bytes] = app(environ, respond)
            try:
                for chunk in body:
                    answer.sent += len(chunk)
                    yield chunk
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()
                self._access(answer, environ, time.monotonic() - started)
        return logged

    def _access(self, answer: SimpleNamespace, environ: dict[str, Any], seconds: float) -> None:
        environ.setdefault("RAW_URI", environ.get("REQUEST_URI") or environ.get("PATH_INFO", ""))
        headers = [(k[5:].replace("_", "-"), v) for k, v in environ.items() if k.startswith("HTTP_")]
        try:
            self.log.access(answer, headers, environ, timedelta(seconds=seconds))
        except Exception:  # an access line must never break an answer
            self.log.exception("cannot write the access log line")
