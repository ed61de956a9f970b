"""The one exception tree of torc-stress.

Every error the operator can meet derives from :class:`StressError`, and its ``str()`` is the
message the operator needs: what went wrong, where, and what to do about it.

```
StressError
  ConfigError            bad settings or command-line values
  SpecError              a workflow spec that cannot become a workflow (exit code 2)
  InventoryError         a bad inventory file
  PlaybookError          a bad playbook (unknown module or keyword, bad template)
  HostError              something failed on one host
    UnreachableError     the host could not be reached (SSH connect, auth, host key)
      HostKeyError       the host key is unknown or changed
    CommandFailed        a command exited non-zero
    CommandTimeout       a command ran past its timeout
  ApiError               the server answered a request with an error
    NotFoundError        404: the workflow or job does not exist
    ConflictError        409/422: the request is valid but not in this state
  ServerUnavailable      the server could not be reached at all
  TestbedError           the network-namespace testbed could not be built or removed
  WheelhouseError        the offline deploy wheelhouse could not be built
  RunDirError            a run directory the report cannot use (exit code 2)
```
"""

from __future__ import annotations


class StressError(Exception):
    """Base class of every error raised by torc-stress."""

    exit_code: int = 1


class ConfigError(StressError, ValueError):
    """A setting or command-line value is invalid."""

    exit_code = 2


class SpecError(StressError, ValueError):
    """A workflow spec is invalid; the message names the job and the field."""

    exit_code = 2

    def __init__(self, message: str, *, job: str | None = None, field: str | None = None) -> None:
        self.job = job
        self.field = field
        where = ", ".join(
            part for part in (f"job {job!r}" if job else "", f"field {field!r}" if field else "")
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)


class InventoryError(StressError, ValueError):
    """An inventory file is invalid."""

    exit_code = 4


class PlaybookError(StressError, ValueError):
    """A playbook is invalid or cannot be templated."""

    exit_code = 4


class HostError(StressError):
    """Something failed on one host."""

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        super().__init__(f"{host}: {message}")


class UnreachableError(HostError):
    """The host could not be reached or authenticated."""

    exit_code = 4


class HostKeyError(UnreachableError):
    """The host's key is unknown or does not match the known_hosts file."""


class CommandFailed(HostError):
    """A command exited with a non-zero code."""

    def __init__(self, host: str, command: str, exit_code: int, stderr: str = "") -> None:
        self.command = command
        self.returncode = exit_code
        self.stderr = stderr
        tail = "\n".join(stderr.strip().splitlines()[-10:])
        message = f"command exited {exit_code}: {command}"
        super().__init__(host, f"{message}\n{tail}" if tail else message)


class CommandTimeout(HostError):
    """A command ran longer than its timeout."""

    def __init__(self, host: str, command: str, timeout: float) -> None:
        self.command = command
        self.timeout = timeout
        super().__init__(host, f"command timed out after {timeout:g} s: {command}")


class ApiError(StressError):
    """The server answered with an HTTP error."""

    def __init__(self, status: int, message: str, *, method: str = "", path: str = "") -> None:
        self.status = status
        self.method = method
        self.path = path
        where = f"{method} {path}: " if method else ""
        super().__init__(f"{where}HTTP {status}: {message}")

    @property
    def retryable(self) -> bool:
        """Whether sending the same request again may succeed (5xx and 429/503)."""
        return self.status >= 500 or self.status == 429


class NotFoundError(ApiError):
    """The server has no such resource (HTTP 404)."""


class ConflictError(ApiError):
    """The request does not fit the resource's current state (HTTP 409 or 422)."""


class ServerUnavailable(StressError):
    """The server could not be reached (connection refused, reset or timed out)."""

    def __init__(self, url: str, reason: str, *, refused: bool = False) -> None:
        self.url = url
        #: nothing listened at the address (ECONNREFUSED): no server was running there then
        self.refused = refused
        super().__init__(
            f"cannot reach the torc server at {url}: {reason}. "
            "Is it running? Start it with 'torc-stress server run' or pass --url."
        )


class TestbedError(StressError):
    """The network-namespace testbed could not be built or torn down."""

    __test__ = False  # not a pytest test class


class WheelhouseError(StressError):
    """The wheelhouse (project + runtime dependencies) for an offline deploy could not be built."""


class RunDirError(StressError):
    """A run directory is missing what the report needs."""

    exit_code = 2
