"""farmctl subcommands beyond `work`, each module adding its own to `farm.cli.cli`."""
from . import operations  # noqa: F401
from . import init, listen, metrics, ops, render  # noqa: F401
from . import dashboard  # noqa: F401
from . import schedule  # noqa: F401
from . import batches  # noqa: F401
