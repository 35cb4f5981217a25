"""Shared test settings: headless plotting, bounded hypothesis runs, quiet thread counts on small machines."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TQDM_DISABLE", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("default", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=400, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def emoji_csv(tmp_path_factory):
    """A small emoji-shaped benchmark folder (modx tests; torch is imported only by the tests that use it)."""
    from modx_helpers import make_emoji_like

    return make_emoji_like(tmp_path_factory.mktemp("emoji") / "bench")
