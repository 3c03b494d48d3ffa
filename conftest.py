"""Root conftest: the claims plugin (markers, options, fixtures, reports) lives in mechanisms/pytest_plugin.py."""

pytest_plugins = ["mechanisms.pytest_plugin"]
