"""Per-video cooldown and global rate limit in Redis: one atomic script per decision.

Public surface: :class:`Limiter`, :class:`Admission`, :class:`LimiterUnavailable`,
:class:`LimiterUnsynced`, :class:`PastAdmission`, :class:`Rebuild`, :func:`open_redis_client`,
:func:`redis_client_from_block`.
"""

from boundary_inference.limiter.client import open_redis_client, redis_client_from_block
from boundary_inference.limiter.limiter import (
    Admission,
    Limiter,
    LimiterUnavailable,
    LimiterUnsynced,
    PastAdmission,
    Rebuild,
)

__all__ = [
    "Admission",
    "Limiter",
    "LimiterUnavailable",
    "LimiterUnsynced",
    "PastAdmission",
    "Rebuild",
    "open_redis_client",
    "redis_client_from_block",
]
