"""The pytest side: the plugin (options, markers, fixtures, session state), the `claim` recorder, and
measurements with their bootstrap intervals."""
