"""Property tests are deterministic here: the same examples on every run and machine (a failure found
once is found again), and no example database is written into the tree."""

from hypothesis import settings

settings.register_profile("vlm-mechanisms", derandomize=True, database=None, deadline=None)
settings.load_profile("vlm-mechanisms")
