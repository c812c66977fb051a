"""Shared test configuration: deterministic hypothesis profiles."""

import os

from hypothesis import HealthCheck, settings

# CI: derandomized, bounded, no deadline (a shared 2-core machine has noisy timings).
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=25,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Local fuzzing: random and longer; select with HYPOTHESIS_PROFILE=dev.
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
