"""The Sandbox: one World, its fault book and an HTTP server, started and stopped together."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from cftrunner.sandbox import llm
from cftrunner.sandbox.control import Backend
from cftrunner.sandbox.faults import FaultBook, FaultRule
from cftrunner.sandbox.ratelimit import RateLimit
from cftrunner.sandbox.records import WorldSettings
from cftrunner.sandbox.routes import ROUTE_NAMES
from cftrunner.sandbox.server import SandboxServer
from cftrunner.sandbox.serving import DEFAULT_LOAD_DELAY, LoadPlan
from cftrunner.sandbox.world import World

DEFAULT_PROJECT_ID = "6f1c2b8e-3d4a-4e5f-9a7b-0c1d2e3f4a5b"
DEFAULT_API_KEY = "sandbox-key"
_POLL_INTERVAL = 0.01  # how soon stop() is noticed; the stdlib default of 0.5 s slows tests down


class Sandbox:
    """A local Prem Studio API whose state lives as long as this object.

    >>> with Sandbox() as sb:
    ...     client = make_client(base_url=sb.url, api_key=DEFAULT_API_KEY)
    """

    def __init__(
        self,
        *,
        api_key: str | None = DEFAULT_API_KEY,
        latency: float = 0.0,
        seed: int = 0,
        judge_models: tuple[str, ...] = ("claude-4.5-sonnet",),
        processing_seconds: float = 0.3,
        recs_polls: int = 1,
        recs_outcome: str = "completed",
        page_size: int = 10,
        add_threshold: float = 0.5,
        correction_failing: str | None = None,
        rate_limit_rps: float | None = None,
        rate_limit_burst: int = 1,
        structured_output: bool = True,
        training_polls: int = 2,
        training_outcome: str = "succeeded",
        training_gain: float = 0.15,
        base_quality: float = llm.BASE_QUALITY,
        list_lag: float = 0.0,
        list_lag_uneven: bool = False,
        model_load_delay: float = DEFAULT_LOAD_DELAY,
        never_loads: str | None = None,
        load_refused: str | None = None,
        judge_drift: float = 0.0,
    ) -> None:
        settings = WorldSettings(
            judge_models=tuple(judge_models),
            processing_seconds=processing_seconds,
            recs_polls=recs_polls,
            recs_outcome=recs_outcome,
            page_size=page_size,
            add_threshold=add_threshold,
            correction_failing=correction_failing,
            structured_output=structured_output,
            training_polls=training_polls,
            training_outcome=training_outcome,
            training_gain=training_gain,
            base_quality=base_quality,
            list_lag=list_lag,
            list_lag_uneven=list_lag_uneven,
            judge_drift=judge_drift,
        )
        self.world = World(settings)
        self.world.set_model_loading(LoadPlan(model_load_delay, never_loads, load_refused))
        self.world.add_project(DEFAULT_PROJECT_ID, "Sandbox project")
        self.faults = FaultBook(seed=seed, routes=ROUTE_NAMES)
        self.rate_limit = RateLimit(rate_limit_rps, rate_limit_burst)
        self._backend = Backend(self.world, self.faults, api_key, latency, self.rate_limit)
        self._lock = threading.Lock()
        self._server: SandboxServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False) -> str:
        """Serves in a daemon thread; returns the base URL (port 0 picks a free port)."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("the sandbox is already running")
            server = SandboxServer((host, port), self._backend, verbose=verbose)
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": _POLL_INTERVAL},
                name=f"prem-sandbox-{server.server_address[1]}",
                daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread
        return self.url

    def serve_forever(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        verbose: bool = False,
        on_ready: Callable[[str], None] | None = None,
    ) -> None:
        """Serves in this thread until stop() or Ctrl-C; on_ready gets the URL once bound."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("the sandbox is already running")
            server = SandboxServer((host, port), self._backend, verbose=verbose)
            self._server = server
        try:
            if on_ready is not None:
                on_ready(self.url)
            server.serve_forever(poll_interval=_POLL_INTERVAL)
        except KeyboardInterrupt:
            pass
        finally:
            with self._lock:
                if self._server is server:
                    self._server = None
            server.server_close()
            server.close_connections()

    def stop(self) -> None:
        """Stops serving and closes the socket and open connections; safe to call twice."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        self.faults.release()  # a held request's thread would outlive the server
        server.shutdown()
        server.server_close()
        server.close_connections()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        return self._bound()[1]

    @property
    def url(self) -> str:
        host, port = self._bound()
        return f"http://{host}:{port}"

    def _bound(self) -> tuple[str, int]:
        server = self._server
        if server is None:
            raise RuntimeError("the sandbox is not running")
        host, port = server.server_address[:2]
        return str(host), int(port)

    # -- state and faults --------------------------------------------------------------------

    def add_project(self, project_id: str | None = None) -> str:
        """Creates a project and its dataset; returns the project id."""
        return self.world.add_project(project_id)

    def dataset_id(self, project_id: str = DEFAULT_PROJECT_ID) -> str:
        return self.world.dataset_id(project_id)

    def add_fault(self, rule: FaultRule) -> None:
        self.faults.add(rule)

    def clear_faults(self) -> None:
        self.faults.clear()

    def release_holds(self) -> None:
        """Let the requests that "hold" faults are holding be acted on and answered."""
        self.faults.release()

    def set_rate_limit(self, rps: float | None, burst: int = 1) -> None:
        """Answer 429 to requests beyond `rps` a second (after `burst` at once); None lifts it."""
        self.rate_limit.configure(rps, burst)

    def set_list_lag(self, seconds: float, uneven: bool = False) -> None:
        """Make the trace list show traces created from now on `seconds` late (see
        WorldSettings.list_lag)."""
        self.world.set_list_lag(seconds, uneven)

    def set_judge_drift(self, drift: float) -> None:
        """Add `drift` (-1 to 1) to every score the judge gives from now on, kept within 0..1:
        a judge that drifted, lenient above 0, harsh below it."""
        self.world.set_judge_drift(drift)

    def set_structured_output(self, enabled: bool) -> None:
        """Off: chat answers 400 to response_format json_schema, as a model without it does."""
        self.world.set_structured_output(enabled)

    def set_training(
        self, polls: int | None = None, outcome: str | None = None, gain: float | None = None
    ) -> None:
        """How jobs created from now on train: `polls` reads "running" after the first read,
        `outcome` succeeded, failed or mixed, `gain` added to the quality of each model trained.
        None leaves a setting as it is; a job keeps the settings it was created with."""
        self.world.set_training(polls=polls, outcome=outcome, gain=gain)

    def set_model_loading(self, delay: float = DEFAULT_LOAD_DELAY, never: str | None = None,
                          refused: str | None = None) -> None:
        """How fine-tuned models asked up from now on load: each runs `delay` seconds after it
        was asked up (it answers chat with 503 until then); one whose id contains `never` never
        comes up, one whose id contains `refused` cannot be loaded (400). Base models, judges and
        aliases are always loaded."""
        self.world.set_model_loading(LoadPlan(delay, never, refused))

    def serving(self) -> dict[str, Any]:
        """The loading plan, each fine-tuned model loaded or loading, and every model asked up
        and down, in order."""
        return self.world.serving_state()

    def set_model_quality(self, model: str, quality: float) -> None:
        """Model `model` answers correctly the prompts of difficulty below `quality` (0 to 1)."""
        self.world.set_model_quality(model, quality)

    def model_quality(self, model: str) -> float:
        """The quality `model` answers with: as set, as trained, else the base quality."""
        return self.world.model_quality(model)

    def counts(self) -> dict[str, Any]:
        return self.world.counts()

    def admitted(self) -> list[tuple[float, str]]:
        """(time.monotonic(), route) of each request the rate limit let through, earliest first."""
        return self.world.ledger.admitted_requests()
