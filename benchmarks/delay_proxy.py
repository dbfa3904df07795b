"""A TCP proxy on loopback that delivers each chunk late, to play a slow broker.

Every chunk read from the broker is forwarded to the client *down_delay* seconds after it
arrived (and, optionally, every client chunk to the broker *up_delay* seconds late).  The
delay is latency, not a throughput cap: chunks are timestamped when read and forwarded in
order once their time has come, so a steady stream stays a steady stream, only shifted.
With the AMQP transport this makes every publisher confirm (and every handshake step)
arrive that much later.

The proxy runs an asyncio loop in a daemon thread of the calling process, or standalone::

    python benchmarks/delay_proxy.py --target 127.0.0.1:5672 --delay 0.05 --lifetime 600

It stops by itself after *lifetime* seconds, on ``stop()``, on leaving a ``with`` block and
at interpreter exit.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import signal
import sys
import threading
import time
from types import TracebackType

CHUNK = 65536


class DelayProxy:
    """Listen on *listen_host*:*listen_port* (0: any free port) and forward to *target*."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        down_delay: float = 0.05,
        up_delay: float = 0.0,
        lifetime: float = 1800.0,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target = (target_host, target_port)
        self.down_delay = down_delay
        self.up_delay = up_delay
        self.lifetime = lifetime
        self.listen = (listen_host, listen_port)
        self.port = 0
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._error: BaseException | None = None
        self._stop_event: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- control from any thread ---------------------------------------------------------

    def start(self) -> int:
        """Start serving in a daemon thread; the port it listens on."""
        self._thread = threading.Thread(target=self._thread_main, name="delay-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10.0):
            raise RuntimeError("delay proxy did not start within 10 s")
        if self._error is not None:
            raise RuntimeError(f"delay proxy failed to start: {self._error}")
        atexit.register(self.stop)
        return self.port

    def stop(self) -> None:
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None and not self._stopped.is_set():
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(event.set)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def __enter__(self) -> DelayProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the loop ------------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start() or dropped at exit
            self._error = exc
            self._ready.set()
        finally:
            self._stopped.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        server = await asyncio.start_server(self._handle, self.listen[0], self.listen[1])
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        tasks = self._tasks
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), self.lifetime)
        finally:
            server.close()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        writers = [client_w]
        try:
            broker_r, broker_w = await asyncio.open_connection(*self.target)
            writers.append(broker_w)
            await asyncio.gather(
                _pipe(client_r, broker_w, self.up_delay),
                _pipe(broker_r, client_w, self.down_delay),
                return_exceptions=True,
            )
        except (OSError, asyncio.CancelledError):
            pass  # the broker is down, or the proxy is stopping: just drop the connection
        finally:
            for writer in writers:
                writer.close()
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy *reader* to *writer*, each chunk *delay* seconds after it was read, in order."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def forward() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                with contextlib.suppress(OSError, RuntimeError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    sender = asyncio.ensure_future(forward())
    try:
        while True:
            try:
                data = await reader.read(CHUNK)
            except OSError:
                data = b""
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                break
        await sender
    finally:
        if not sender.done():
            sender.cancel()
        with contextlib.suppress(BaseException):
            await sender


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:5672", help="HOST:PORT to forward to")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any)")
    parser.add_argument(
        "--delay",
        type=float,
        default=0.05,
        help="seconds each broker->client chunk is held (default 0.05)",
    )
    parser.add_argument(
        "--up-delay",
        type=float,
        default=0.0,
        help="seconds each client->broker chunk is held (default 0)",
    )
    parser.add_argument(
        "--lifetime", type=float, default=600.0, help="stop after this many seconds (default 600)"
    )
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    proxy = DelayProxy(
        host or "127.0.0.1",
        int(port),
        down_delay=args.delay,
        up_delay=args.up_delay,
        lifetime=args.lifetime,
        listen_port=args.port,
    )
    listening = proxy.start()
    print(
        f"delay proxy 127.0.0.1:{listening} -> {args.target}, broker->client +{args.delay:g} s,"
        f" client->broker +{args.up_delay:g} s, for at most {args.lifetime:g} s",
        flush=True,
    )
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    deadline = time.monotonic() + args.lifetime
    while not done.is_set() and time.monotonic() < deadline and not proxy._stopped.is_set():
        done.wait(0.5)
    proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
