"""Running the emulator: uvicorn (httptools + uvloop) in a background thread.

``EmulatorServer`` is what tests, the demo and the benchmarks use in-process; the
``meterstream emulator`` command runs the same thing and waits for a signal. The state
lives in the ``EmulatorServer`` object, not in uvicorn, so ``stop()`` then ``start()``
serves the same sessions, identifiers and totals again on the same port (a test makes
Stripe unreachable, connection refused, then brings it back).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from meterstream_local.emulator.app import EmulatorApp
from meterstream_local.emulator.faults import Faults, Knobs
from meterstream_local.emulator.meters import Meter, check_unique
from meterstream_local.emulator.state import EmulatorState

DEFAULT_HOST = "127.0.0.1"
#: The emulator's documented default port (``meterstream emulator``). 12111 is where
#: stripe-mock listens too, so tooling that
#: expects a local Stripe finds this one; run one of them at a time, or pass --port.
DEFAULT_PORT = 12111
#: How long start() waits for uvicorn to come up before failing.
START_TIMEOUT_SECONDS = 10.0
#: How long stop() lets in-flight requests finish before cutting connections.
STOP_GRACE_SECONDS = 1
#: Idle keep-alive connections are kept longer than any client's pool expiry (httpx: 5 s),
#: so it is always the client that closes an idle connection, never a race with the server.
KEEP_ALIVE_SECONDS = 75
#: Pending connections the listening socket queues (bursts from many concurrent senders).
LISTEN_BACKLOG = 2048


class EmulatorError(RuntimeError):
    """The emulator could not start (port taken, uvicorn failed)."""


class EmulatorServer:
    """A local Stripe on ``host:port`` (port 0: any free port) in a background thread.

    Use as a context manager, or call ``start()``/``stop()``; ``base_url`` is set once
    started and stays the same across restarts. ``state`` holds what was accepted,
    ``configure(**knobs)`` changes knobs at run time (see ``Knobs``).
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = 0,
        *,
        meters: Iterable[Meter] = (),
        **knobs: Any,
    ) -> None:
        self.host = host
        self.port = port
        initial = Knobs().replace(**knobs)
        self.faults = Faults(initial)
        self.state = EmulatorState(check_unique(meters), now=time.time())
        self.app = EmulatorApp(self.state, self.faults, initial_knobs=initial)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://host:port`` for both Stripe bases (api and meter_events)."""
        if not self.port:
            raise EmulatorError("the emulator has not been started yet (port 0 is chosen at start)")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> EmulatorServer:
        """Bind (the same port again after a stop) and serve; returns once listening."""
        import uvicorn

        with self._lock:
            if self.running:
                return self
            sock = self._bind()
            config = uvicorn.Config(
                self.app,
                loop="uvloop",
                http="httptools",
                lifespan="off",
                log_config=None,
                log_level="warning",
                access_log=False,
                server_header=False,
                timeout_keep_alive=KEEP_ALIVE_SECONDS,
                timeout_graceful_shutdown=STOP_GRACE_SECONDS,
                backlog=LISTEN_BACKLOG,
            )
            server = uvicorn.Server(config)
            failure: list[BaseException] = []

            def run() -> None:
                try:
                    server.run(sockets=[sock])
                except BaseException as exc:  # surfaced by start(), not lost in the thread
                    failure.append(exc)
                finally:
                    sock.close()

            thread = threading.Thread(target=run, name=f"emulator-{self.port}", daemon=True)
            thread.start()
            deadline = time.monotonic() + START_TIMEOUT_SECONDS
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    server.should_exit = True
                    thread.join(STOP_GRACE_SECONDS + 1)
                    reason = repr(failure[0]) if failure else "did not start in time"
                    raise EmulatorError(f"emulator on {self.host}:{self.port} failed: {reason}")
                time.sleep(0.005)
            self._server, self._thread = server, thread
        return self

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        # SO_REUSEADDR: rebinding the same port right after stop() must not trip over
        # connections still in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
            sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            sock.close()
            raise EmulatorError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc} "
                "(is another emulator running there? choose another --port)"
            ) from exc
        sock.set_inheritable(False)
        self.port = sock.getsockname()[1]
        return sock

    def stop(self) -> None:
        """Stop serving (connections refused from now on); the state is kept."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
            if server is None or thread is None:
                return
            server.should_exit = True
            thread.join(STOP_GRACE_SECONDS + 5)
            if thread.is_alive():
                server.force_exit = True
                thread.join(5)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- control -----------------------------------------------------------------------------

    @property
    def knobs(self) -> Knobs:
        """The knobs in force."""
        return self.faults.knobs

    def configure(self, **knobs: Any) -> Knobs:
        """Change knobs at run time (``Knobs`` names); a new failure schedule counts from now."""
        return self.faults.configure(**knobs)

    def expire_sessions(self) -> int:
        """Expire every live session now; returns how many there were."""
        return self.app.accounts.expire_sessions(self.app.now())

    def add_meter(self, meter: Meter, *, account: str | None = None) -> Meter:
        """Declare a meter at run time (on the platform, or a connected ``account``)."""
        return self.account_state(account).add_meter(meter, self.app.now())

    def account_state(self, account: str | None) -> EmulatorState:
        """The state of a connected account (None: the platform's, ``state``)."""
        return self.app.accounts.state(account, self.app.now())

    def reset(self, *, keep_knobs: bool = False) -> None:
        """Forget sessions, events and counters (and restore the start-up knobs)."""
        self.app.reset(keep_knobs=keep_knobs)

    def freshness(self) -> dict[str, Any]:
        """The same report as ``GET /_emulator/freshness``."""
        return self.state.freshness()

    def reset_freshness(self) -> None:
        """Start the freshness measurement again."""
        self.state.reset_freshness(self.app.now())

    def stats(self, *, account: str | None = None) -> dict[str, Any]:
        """The same report as ``GET /_emulator/stats[?account=acct_...]``."""
        return self.app.stats(self.app.now(), self.account_state(account))
