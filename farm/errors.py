"""The exceptions jobfarm raises; each class docstring is its default message."""
from __future__ import annotations


class FarmError(Exception):
    """jobfarm failed."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ManifestError(FarmError):
    """The manifest is not valid."""

    exit_code = 2

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class UsageError(FarmError):
    """Bad usage."""

    exit_code = 2


class SerializationError(FarmError, TypeError):
    """The job's payload cannot be written as JSON."""

    exit_code = 2


class DriverUnavailable(FarmError):
    """The queue's database or broker cannot be reached."""


class UnknownJob(FarmError):
    """No such job."""


class PayloadError(FarmError):
    """The job document is malformed or names a job outside `imports:`."""


class JobTimeout(BaseException):
    """The job ran past its timeout."""

    # BaseException, so a job's own `except Exception:` cannot swallow it.


class MaxAttemptsExceeded(Exception):
    """The job was attempted too many times."""


class SkipRetry(Exception):
    """The job gave up: it is failed now, with no retry (its failed() hook still runs)."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class Abandon(BaseException):
    """A second stop signal: give the running job back and exit now."""
