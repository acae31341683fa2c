"""Every test run gets its own cache folder ($XDG_CACHE_HOME): the lite model exports and the
verified-file stamps a test writes never leak into the user's ~/.cache or into another run."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    yield
    mp.undo()
