"""Settings for the whole suite."""

from hypothesis import settings

# Hypothesis's per-example deadline (200 ms) measures the machine, not the
# code: on a busy CI machine it fails tests that are right.  Speed is measured
# in bench/, never asserted in a test.
settings.register_profile("cdrd", deadline=None)
settings.load_profile("cdrd")
