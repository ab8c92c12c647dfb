"""Worker apps that the multi-process tests run with ``python -m tidings run``."""
