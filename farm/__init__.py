"""jobfarm: a job queue and a supervisor-managed worker farm."""
from .app import configure
from .consumer import Reservation, reserve
from .dispatch import dispatch, dispatch_many, dispatch_sync
from .errors import (DriverUnavailable, FarmError, JobTimeout, ManifestError, MaxAttemptsExceeded,
                     PayloadError, SerializationError, SkipRetry)
from .jobs import Job, job
from .events import JobEvent, on
from .middleware import RateLimited, ThrottlesExceptions, WithoutOverlapping
from .operations import cancel, job_status, pause, paused, resume

__all__ = [
    "Job", "job", "dispatch", "dispatch_many", "dispatch_sync", "configure", "reserve", "Reservation",
    "FarmError", "ManifestError", "SerializationError", "DriverUnavailable", "PayloadError",
    "JobTimeout", "MaxAttemptsExceeded",
]
__all__ += ["job_status", "cancel", "pause", "resume", "paused"]     # operations (farmctl job, cancel, pause)
__all__ += ["on", "JobEvent", "SkipRetry"]                       # events, give up without retry
from .batches import batch, batch_cancel, batch_status   # noqa: E402  (chains and batches)
from .chains import chain   # noqa: E402
__all__ += ["chain", "batch", "batch_status", "batch_cancel"]
__all__ += ["WithoutOverlapping", "RateLimited", "ThrottlesExceptions"]   # middleware (farm/middleware.py)
__version__ = "0.1.0"
