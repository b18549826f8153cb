"""Per-video cooldown and global rate limit in Redis: one atomic script per decision.

Public surface: :class:`Limiter`, :class:`Admission`, :class:`LimiterUnavailable`,
:func:`open_redis_client`, :func:`redis_client_from_block`.
"""

from boundary_inference.limiter.client import open_redis_client, redis_client_from_block
from boundary_inference.limiter.limiter import Admission, Limiter, LimiterUnavailable

__all__ = [
    "Admission",
    "Limiter",
    "LimiterUnavailable",
    "open_redis_client",
    "redis_client_from_block",
]
