"""The exception tree of cftrunner; every error the package raises derives from CftrunnerError.

    CftrunnerError
    ├── InputError            bad input or usage: nothing was run (CLI exit 2)
    │   ├── PromptsError      the prompts file cannot be used
    │   ├── ModelNotFound     the API has no such model (a 404 on chat): the run stops intact
    │   ├── RunExistsError    `start --run-id` of an id that already exists
    │   ├── RunNotFoundError  no run with that id
    │   └── ItemNotFoundError no item at that position in the run
    ├── StaleStateError       a compare-and-set found another state than the one it moves from
    ├── UnusableDatabaseError the state database cannot be used as it is, and retrying would not
    │                         help: a directory, not a database, corrupt, read-only (CLI exit 65)
    ├── DatabaseError         any other error of the state database: locked past the busy
    │                         timeout, full, its server unreachable; worth a retry (CLI exit 3)
    ├── ApiError              the HTTP boundary (mapped from requests in exactly one place)
    │   ├── TransientError    worth trying again later: connection trouble, timeouts, 408, 429, 5xx
    │   ├── RejectedError     a 4xx: the server refused the request, so it surely did not happen
    │   │   └── AuthError     401/403: stops the whole run instead of failing items (exit 77)
    │   └── BadResponseError  a 2xx whose body cannot be read
    ├── JudgeOutputError      a judge answer that is not a valid judgment
    ├── RunBusy               another live process holds the run's lease (CLI exit 75)
    └── RunStopped            the run cannot go on now; its state is intact and `resume` continues it
        ├── LeaseLost         another process took the run over; this one must not touch it (exit 75)
        ├── Interrupted       SIGTERM or SIGINT asked the process to stop (exit 128 + signal)
        ├── KeyRejected       the API refused the key (401/403): a person must act (exit 77)
        ├── StillTraining     the followed job is still training: look again later (exit 0)
        ├── ModelsLoading     new models are still loading for inference: look again later (exit 0)
        └── OutcomePending    whether a lost request happened cannot be told yet: look again later
            └── NeedsDecision not told in time: a person decides with `cftrunner settle` (exit 5)

The driver's errors become UnusableDatabaseError in one place, the engine's error hook
(store/dialect.py); every other database error becomes DatabaseError at the store's boundary
(store/errors.py), so that nothing above the store sees SQLAlchemy's own.

Each ApiError says whether the request may have reached the server (`maybe_happened`); that single
bit decides between sending again and reconciling against remote state first.
"""

from __future__ import annotations


class CftrunnerError(Exception):
    """cftrunner failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__ or self.__class__.__name__)

    @property
    def message(self) -> str:
        return str(self.args[0])


class InputError(CftrunnerError):
    """Bad input or usage."""


class PromptsError(InputError):
    """The prompts file cannot be used."""


class ModelNotFound(InputError):
    """The API answers 404 for the run's model or judge model: every item would fail alike."""


class RunExistsError(InputError):
    """A run with that id already exists."""


class RunNotFoundError(InputError):
    """No run with that id."""


class ItemNotFoundError(InputError):
    """No item at that position in the run."""


class StaleStateError(CftrunnerError):
    """The run or item is no longer in the state this change moves it from."""


class UnusableDatabaseError(CftrunnerError):
    """The state database cannot be used as it is: retrying will not help, repairing it or
    pointing at another one will. (A database that is locked, full, or whose server is down is
    not this: a later retry may succeed.)"""


class DatabaseError(CftrunnerError):
    """The state database failed in a way a later retry may fix (locked, full, its server down):
    "state database: <the error's class>: <the first line of the driver's message>"."""


class JudgeOutputError(CftrunnerError):
    """The judge answer is not a valid judgment."""

    def __init__(self, message: str | None = None, kind: str = "judge_malformed") -> None:
        super().__init__(message)
        self.kind = kind  # "judge_malformed", or "judge_truncated" for an answer cut off


class RunStopped(CftrunnerError):
    """The run cannot go on now; its state is kept and `cftrunner resume` continues it."""


class RunBusy(CftrunnerError):
    """Another process is driving this run."""


class LeaseLost(RunStopped):
    """Another process took this run over."""


class Interrupted(RunStopped):
    """A signal asked the process to stop."""

    def __init__(self, signum: int, message: str | None = None,
                 run_id: str | None = None) -> None:
        super().__init__(message)
        self.signum = signum
        self.run_id = run_id  # the run stopped, when there was one


class ApiError(CftrunnerError):
    """The Prem API call failed."""

    def __init__(
        self,
        message: str | None = None,
        *,
        method: str = "",
        path: str = "",
        status_code: int | None = None,
        retry_after: float | None = None,
        maybe_happened: bool = False,
    ) -> None:
        super().__init__(message)
        self.method = method
        self.path = path
        self.status_code = status_code
        self.retry_after = retry_after
        self.maybe_happened = maybe_happened

    @property
    def kind(self) -> str:
        """A short stable label for logs and failure counts (`http_503`, `timeout`, ...)."""
        if self.status_code is not None:
            return f"http_{self.status_code}"
        return type(self).__name__


class TransientError(ApiError):
    """The Prem API is unavailable for now."""


class RejectedError(ApiError):
    """The Prem API rejected the request."""


class AuthError(RejectedError):
    """The Prem API rejected the API key."""


class BadResponseError(ApiError):
    """The Prem API answered with a body that cannot be read."""


class OutcomePending(RunStopped):
    """Whether a request whose answer was lost happened cannot be told yet; a later resume
    looks again, and sends nothing before it can tell."""


class NeedsDecision(OutcomePending):
    """Whether a request whose answer was lost happened could not be told in time; a person
    decides with `cftrunner settle`."""


class KeyRejected(RunStopped):
    """The Prem API refused the API key (401/403): every later try would be refused too until a
    person changes the key or its rights; the run's state is intact."""


class StillTraining(RunStopped):
    """The fine-tuning job the run follows is still training; a later resume looks again."""


class ModelsLoading(RunStopped):
    """The run's new models are still loading for inference; a later resume looks again."""
