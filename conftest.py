"""Root conftest: the claims plugin (markers, options, fixtures, reports) lives in mechanisms/suite/plugin.py."""

pytest_plugins = ["mechanisms.suite.plugin"]
