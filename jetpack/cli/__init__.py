"""The ``jetpack`` command line: a light dispatcher (``main``) and one module per command group.

``jetpack --help`` imports no trio, httpx or gnupg: command modules load only when run.
"""
