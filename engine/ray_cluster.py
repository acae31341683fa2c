"""The Ray session of `--engine ray` (DESIGN §10): the optional import and joining a cluster.

Shared by the build's parallel passes (`engine.ray_build`) and the indexer's Ray job
(`indexer.ray_runner`). Ray is optional (`pip install 'simdex[ray]'`); nothing here imports it
before it is needed.
"""

from __future__ import annotations

import logging

from simdex.engine.errors import MissingDependencyError, SimdexError

RAY_EXTRA_HINT = "pip install 'simdex[ray]'"


class RayClusterError(SimdexError):
    """The Ray cluster named by --address cannot be reached."""


def require_ray(data: bool = False):
    """The `ray` module (with Ray Data when `data`), or MissingDependencyError naming the extra.

    Example:
        >>> ray = require_ray()   # doctest: +SKIP
    """
    what = "Ray Data" if data else "Ray"
    try:
        import ray

        if data:
            import ray.data  # noqa: F401
    except ImportError:
        raise MissingDependencyError(f"--engine ray needs {what}, which is not installed: {RAY_EXTRA_HINT}") from None
    return ray


class RayCluster:
    """Joins the cluster at `address` ('auto', 'HOST:PORT', 'ray://…'), or starts a local one when
    `address` is None; a Ray session this process already holds is used as it is. Leaves the
    session as it found it.

    Example:
        >>> with RayCluster("auto") as ray:          # doctest: +SKIP
        ...     ray.cluster_resources()["CPU"]
    """

    def __init__(self, address: str | None = None, data: bool = False):
        self.address = address
        self.data = data
        self._started = False

    def __enter__(self):
        ray = require_ray(self.data)
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False)
            except ConnectionError as exc:
                raise RayClusterError(f"cannot reach a Ray cluster at {self.address}: {exc}") from None
            self._started = True
        return ray

    def __exit__(self, *exc) -> None:
        if self._started:
            import ray

            ray.shutdown()
