"""The robot's side of the connection to a policy server (`vla.deploy.server`): requests go out and
replies come back on background threads, so the control loop never waits on the network.

    client = PolicyClient(ControlSettings(url="ws://gpu-box:8765"))
    client.start(); info = client.wait_metadata(5.0)
    rid = client.submit({"image": frame, "instruction": "...", "step": t})   # returns at once
    reply = client.poll()          # the next reply, or None: {"type": "actions"|"error"|"lost", "id", ...}

One thread connects (and reconnects after any failure, with a doubling backoff) and receives; another
sends each submitted request as soon as it is submitted, so several may be in flight (the server
answers them concurrently, each reply naming its request). While there is no connection only the
newest submitted request waits to be sent (an older one comes back {"type": "lost"}: its observation
is stale). A request unanswered after `request_timeout_s` (the watchdog), or in flight when the
connection breaks, comes back as {"type": "lost"} and the connection is re-opened. Each event is
logged and counted in `events`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time

import websockets
from websockets.sync.client import ClientConnection, connect

from vla.config.deploy import ControlSettings
from vla.deploy import wire

log = logging.getLogger(__name__)
_MAX_BACKOFF_S = 2.0
MAX_REPLY_BYTES = 16 * 2**20


class PolicyClient:
    def __init__(self, settings: ControlSettings) -> None:
        self.settings = settings
        self.metadata: dict | None = None
        self.events = {"connects": 0, "disconnects": 0, "timeouts": 0, "errors": 0}
        self._ids = itertools.count(1)
        self._outbox: queue.Queue[dict] = queue.Queue()
        self._inbox: queue.Queue[dict] = queue.Queue()
        self._in_flight: dict[int, float] = {}  # request id -> time sent
        self._lock = threading.Lock()  # guards _conn and _in_flight between the two threads
        self._conn: ClientConnection | None = None
        self._connected = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._main, name="policy-client", daemon=True)
        self._sender = threading.Thread(target=self._send_loop, name="policy-client-send", daemon=True)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> PolicyClient:
        self._thread.start()
        self._sender.start()
        return self

    def wait_metadata(self, timeout: float) -> dict:
        """The server's metadata (PolicyInfo fields), waiting up to `timeout` s for the first connection."""
        if not self._connected.wait(timeout):
            raise ConnectionError(f"no policy server at {self.settings.url} within {timeout} s")
        return self.metadata

    def submit(self, request: dict) -> int:
        """Queue an infer request (image, instruction, state, step) to be sent at once; returns its id."""
        request = {"type": "infer", **request, "id": next(self._ids)}
        self._outbox.put(request)
        return request["id"]

    def poll(self, timeout: float | None = None) -> dict | None:
        """The next reply (waiting up to `timeout` s; None: do not wait), or None."""
        try:
            return self._inbox.get(timeout=timeout) if timeout else self._inbox.get_nowait()
        except queue.Empty:
            return None

    def close(self) -> None:
        self._closing.set()
        self._thread.join(5)
        self._sender.join(5)

    def __enter__(self) -> PolicyClient:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # The connection thread.
    def _connect(self) -> ClientConnection | None:
        s = self.settings
        try:
            conn = connect(
                s.url,
                open_timeout=s.connect_timeout_s,
                ping_interval=s.request_timeout_s,
                ping_timeout=s.request_timeout_s,
                close_timeout=1.0,
                max_size=MAX_REPLY_BYTES,
                compression=None,
                proxy=None,
            )
            metadata = wire.unpack(conn.recv(timeout=s.connect_timeout_s))
        except (OSError, TimeoutError, websockets.WebSocketException, wire.WireError) as error:
            log.debug("connect to %s failed: %s", s.url, error)
            return None
        if metadata.get("type") != "metadata":
            log.error(
                "%s sent %r first, not its metadata; is it a policy server?", s.url, metadata.get("type")
            )
            conn.close()
            return None
        self.metadata = metadata
        self.events["connects"] += 1
        log.info("connected to %s (%s, chunk %s)", s.url, metadata.get("source"), metadata.get("chunk_size"))
        return conn

    def _drop(self, conn: ClientConnection, why: str, counter: str) -> None:
        """Close `conn` and give up every request in flight on it."""
        self.events[counter] += 1
        with self._lock:
            self._connected.clear()
            self._conn = None
            lost, self._in_flight = list(self._in_flight), {}
        for request_id in lost:
            self._inbox.put({"type": "lost", "id": request_id, "error": why})
        log.warning("connection to %s: %s; reconnecting", self.settings.url, why)
        with contextlib.suppress(Exception):  # closing a broken connection may fail; it is gone either way
            conn.close()

    def _main(self) -> None:
        conn, backoff = None, self.settings.reconnect_backoff_s
        while not self._closing.is_set():
            if conn is None:
                conn = self._connect()
                if conn is None:
                    self._closing.wait(backoff)
                    backoff = min(2 * backoff, _MAX_BACKOFF_S)
                    continue
                backoff = self.settings.reconnect_backoff_s
                with self._lock:
                    self._conn = conn
                    self._connected.set()
            try:
                reply = wire.unpack(conn.recv(timeout=0.05))
            except TimeoutError:
                with self._lock:
                    oldest = min(self._in_flight.values(), default=None)
                if oldest is not None and time.perf_counter() - oldest > self.settings.request_timeout_s:
                    why = f"no reply within {self.settings.request_timeout_s} s (watchdog)"
                    self._drop(conn, why, "timeouts")
                    conn = None
                continue
            except (OSError, websockets.WebSocketException, wire.WireError) as error:
                self._drop(conn, f"{type(error).__name__}: {error}", "disconnects")
                conn = None
                continue
            with self._lock:
                sent = self._in_flight.pop(reply.get("id"), None)
            if sent is None:
                continue  # not a request of ours in flight (e.g. answered after its watchdog)
            if reply["type"] == "error":
                self.events["errors"] += 1
                log.error("the server refused request %s: %s", reply.get("id"), reply.get("error"))
            reply["roundtrip_ms"] = 1000 * (time.perf_counter() - sent)
            self._inbox.put(reply)
        if conn is not None:
            conn.close()
        self._connected.clear()

    # The sending thread.
    def _send_loop(self) -> None:
        while not self._closing.is_set():
            try:
                request = self._outbox.get(timeout=0.05)
            except queue.Empty:
                continue
            while not self._connected.wait(0.05):  # only the newest request waits for a connection
                if self._closing.is_set():
                    return
                with contextlib.suppress(queue.Empty):
                    newer = self._outbox.get_nowait()
                    self._inbox.put(
                        {"type": "lost", "id": request["id"], "error": "replaced by a newer request"}
                    )
                    request = newer
            with self._lock:
                conn = self._conn
                if conn is not None:
                    self._in_flight[request["id"]] = time.perf_counter()
            try:
                if conn is None:
                    raise ConnectionError("the connection was lost")
                conn.send(wire.pack(request))
            except (OSError, websockets.WebSocketException) as error:  # the receiver reconnects
                with self._lock:
                    self._in_flight.pop(request["id"], None)
                self._inbox.put({"type": "lost", "id": request["id"], "error": str(error)})
