"""farmctl subcommands beyond `work`, each module adding its own to `farm.cli.cli`."""
from . import ops  # noqa: F401
