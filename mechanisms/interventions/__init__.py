"""Edits and hooks on a running model: token edits and their selections, condition records, head hooks,
attention knockout. Each undoes itself; none knows which model family it runs on."""
