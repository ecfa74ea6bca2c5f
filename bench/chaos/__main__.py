"""`python -m bench.chaos`: scripts/chaos."""
import sys

from .main import main

sys.exit(main())
