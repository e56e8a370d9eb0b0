"""A policy server: any `Policy` (torch, onnx, onnx_int8 backend; an export or run folder) behind a
websocket, for robot clients on other machines (`scripts/serve.py`, `vla.deploy.client`).

Why websockets + msgpack (as openpi's policy server): one long-lived connection per robot with
messages in both directions and no per-request HTTP handshake (REST, as OpenVLA's deploy.py does,
pays one per action chunk), keepalive pings that find a dead peer, a `max_size` that refuses a huge
frame before it is buffered, and the `websockets` library is pure Python, typed, maintained and
already in our environment. msgpack carries numpy arrays as raw bytes (`vla.deploy.wire`), exactly
and without pickle's code execution. gRPC (LeRobot) would add generated stubs and a protobuf
toolchain for the same four message kinds.

    server = PolicyServer(load_policy("outputs/export/..."), ServerSettings(port=8765))
    server.run()                      # until SIGINT / SIGTERM, then closes every connection cleanly

On connect the server sends a metadata message (`PolicyInfo`: action size, chunk size, control rate,
statistics key, image size, state size). Requests are answered on their connection as each is done
(several may be in flight; replies carry the request's id); the model runs in one worker thread, so
the event loop keeps reading requests, health checks and pings while it computes. A bad request gets an error reply naming what was wrong and the
connection stays open; a frame over `max_message_bytes`, or a peer that stops answering pings (e.g.
one that sent half a frame and stalled), loses its connection. Nothing a client sends stops the
server or delays other clients beyond the model time they share.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.server import ServerConnection, serve

from vla.config.deploy import ServerSettings
from vla.deploy import wire

log = logging.getLogger(__name__)
MAX_INSTRUCTION_CHARS = 1000
IMAGE_SIDE = (8, 4096)  # pixels: any size is resized to the model's input; beyond these it is a mistake


class RequestError(ValueError):
    """A request the policy cannot run: the message says what to send instead."""


def check_request(message: dict, state_dim: int) -> tuple[np.ndarray, str, np.ndarray | None]:
    """(image uint8 [H, W, 3], instruction, state [S] float32 or None) of an infer request, or RequestError."""
    image = message.get("image")
    if not isinstance(image, np.ndarray):
        raise RequestError("image: send an RGB uint8 array [H, W, 3]")
    if image.dtype != np.uint8:
        raise RequestError(f"image has dtype {image.dtype}; send uint8 RGB [H, W, 3] (0-255)")
    if (
        image.ndim != 3
        or image.shape[2] != 3
        or not all(IMAGE_SIDE[0] <= n <= IMAGE_SIDE[1] for n in image.shape[:2])
    ):
        raise RequestError(
            f"image has shape {list(image.shape)}; send [H, W, 3] with H, W in [{IMAGE_SIDE[0]}, {IMAGE_SIDE[1]}]"
        )
    instruction = message.get("instruction")
    if (
        not isinstance(instruction, str)
        or not instruction.strip()
        or len(instruction) > MAX_INSTRUCTION_CHARS
    ):
        raise RequestError(
            f"instruction: send a non-empty string of at most {MAX_INSTRUCTION_CHARS} characters"
        )
    state = message.get("state")
    if state_dim == 0:
        if state is not None:
            raise RequestError("state: this policy reads no robot state; leave it out")
        return image, instruction, None
    if not isinstance(state, np.ndarray) or state.dtype.kind != "f" or state.shape != (state_dim,):
        shape = list(state.shape) if isinstance(state, np.ndarray) else type(state).__name__
        raise RequestError(f"state: this policy reads a float state of shape [{state_dim}], got {shape}")
    if not np.all(np.isfinite(state)):
        raise RequestError("state has NaN or inf values")
    return image, instruction, state.astype(np.float32)


class PolicyServer:
    """Serves `policy` (a `vla.model.policy.Policy`, or anything with `.info` and `.act`) over websockets."""

    def __init__(self, policy: Any, settings: ServerSettings) -> None:
        self.policy = policy
        self.settings = settings
        info = dataclasses.asdict(policy.info)
        reads_meta = bool(getattr(policy, "reads_meta", False))  # vla.deploy.oracle only
        self.metadata = {"type": "metadata", "protocol": wire.VERSION, **info, "reads_meta": reads_meta}
        self.stats = {"connections": 0, "open": 0, "requests": 0, "errors": 0}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")
        self._started = time.monotonic()
        self.port: int | None = None

    # The model call, in the worker thread.
    def _infer(self, image: np.ndarray, instruction: str, state: np.ndarray | None, meta: Any) -> tuple:
        start = time.perf_counter()
        if meta is not None and getattr(self.policy, "reads_meta", False):
            actions = self.policy.act(image, instruction, state, meta=meta)
        else:
            actions = self.policy.act(image, instruction, state)
        return np.asarray(actions), time.perf_counter() - start

    async def _reply(self, message: dict) -> dict:
        kind = message["type"]
        if kind == "health":
            return {
                "type": "health",
                "ok": True,
                "uptime_s": time.monotonic() - self._started,
                **self.stats,
            }
        if kind == "metadata":
            return self.metadata
        if kind != "infer":
            raise RequestError(f"type={kind!r}: send 'infer', 'health' or 'metadata'")
        image, instruction, state = check_request(message, self.policy.info.state_dim)
        queued = time.perf_counter()
        loop = asyncio.get_running_loop()
        actions, infer_s = await loop.run_in_executor(
            self._executor, self._infer, image, instruction, state, message.get("meta")
        )
        queue_s = time.perf_counter() - queued - infer_s
        if self.settings.inject_delay_ms > 0:  # measurements only: a slower model, without using the CPU
            await asyncio.sleep(self.settings.inject_delay_ms / 1000)
        self.stats["requests"] += 1
        return {
            "type": "actions",
            "step": message.get("step"),
            "actions": actions,
            "timing": {"infer_ms": 1000 * infer_s, "queue_ms": 1000 * queue_s},
        }

    async def _answer(self, connection: ServerConnection, payload, received: float) -> None:
        """Reply to one message on `connection` (an error reply for a bad one)."""
        peer = connection.remote_address
        request_id = None
        try:
            message = wire.unpack(payload)
            request_id = message.get("id")
            reply = await self._reply(message)
        except (wire.WireError, RequestError) as error:
            self.stats["errors"] += 1
            log.warning("client %s: bad request: %s", peer, error)
            reply = {"type": "error", "error": str(error)}
        except Exception as error:  # the policy failed on an accepted input: say so, keep serving
            self.stats["errors"] += 1
            log.exception("client %s: the policy failed", peer)
            reply = {"type": "error", "error": f"the policy failed: {type(error).__name__}: {error}"}
        if request_id is not None and isinstance(request_id, int | str):
            reply = {**reply, "id": request_id}
        if reply.get("type") == "actions":
            reply["timing"]["server_ms"] = 1000 * (time.perf_counter() - received)
        with contextlib.suppress(websockets.ConnectionClosed):  # the client left; nothing to answer
            await connection.send(wire.pack(reply))

    async def _handle(self, connection: ServerConnection) -> None:
        """Answer a connection's messages concurrently (a robot keeps several chunk requests in flight
        when its latency is over half a chunk), at most `max_in_flight` at a time: beyond that the
        connection is not read until one is answered. Replies carry their request's id and may come
        out of order; the model itself runs one request at a time."""
        peer = connection.remote_address
        self.stats["connections"] += 1
        self.stats["open"] += 1
        log.info("client %s connected", peer)
        slots = asyncio.Semaphore(self.settings.max_in_flight)
        tasks: set[asyncio.Task] = set()

        async def answer(payload, received: float) -> None:
            try:
                await self._answer(connection, payload, received)
            finally:
                slots.release()

        try:
            await connection.send(wire.pack(self.metadata))
            async for payload in connection:
                received = time.perf_counter()
                await slots.acquire()
                task = asyncio.create_task(answer(payload, received))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except websockets.ConnectionClosed as closed:
            log.info("client %s: connection closed (%s)", peer, closed)
        finally:
            for task in list(tasks):
                task.cancel()
            self.stats["open"] -= 1

    async def serve(self, stop: asyncio.Event, ready: threading.Event | None = None) -> None:
        """Serve until `stop` is set, then close every connection (code 1001, going away)."""
        s = self.settings
        async with serve(
            self._handle,
            s.host,
            s.port,
            max_size=s.max_message_bytes,
            ping_interval=s.ping_interval_s,
            ping_timeout=s.ping_timeout_s,
            open_timeout=s.ping_timeout_s,
            compression=None,  # images are incompressible enough; deflate would cost ms per frame
        ) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            log.info(
                "serving %s (%s) on ws://%s:%s",
                self.metadata["source"],
                self.metadata["backend"],
                s.host,
                self.port,
            )
            if ready is not None:
                ready.set()
            await stop.wait()
            log.info("shutting down: closing %d connection(s)", self.stats["open"])
        self._executor.shutdown(wait=True)

    def run(self) -> None:
        """Serve in this thread until SIGINT or SIGTERM."""

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await self.serve(stop)

        asyncio.run(main())


class ServerThread:
    """A `PolicyServer` in a background thread (tests, benchmarks, a notebook):

    with ServerThread(server) as url:  ...  # ws://127.0.0.1:<port>
    """

    def __init__(self, server: PolicyServer) -> None:
        self.server = server
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="policy-server", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await self.server.serve(self._stop, self._ready)

        asyncio.run(main())

    def start(self) -> str:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the policy server did not start within 10 s")
        return f"ws://{self.server.settings.host}:{self.server.port}"

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
