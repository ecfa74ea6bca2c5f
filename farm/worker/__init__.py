"""The worker: `farmctl work` and `farmctl listen`."""
