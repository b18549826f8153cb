"""Redis clients for the limiter: a URL or a saved prefect-redis block. Private module.

Every client built here gives up after ``timeout_s`` (connect and each reply) and never retries.
redis-py 8.1's ``redis.Redis(host=...)`` constructor (which ``RedisDatabase.get_client()`` uses)
retries connection and timeout errors 10 times with backoff: measured on a SIGSTOPped server, one
PING with a 0.5 s timeout took 10.25 s. That would turn one hung Redis into a minute-long guard, and
re-send an admission whose first attempt may already have run. A slow Redis is an unavailable one;
the caller fails closed.
"""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def open_redis_client(url: str, *, timeout_s: float) -> redis.Redis:
    """A client for ``redis://``, ``rediss://`` or ``unix://`` ``url``, bounded by ``timeout_s``."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=_no_retry(),
        health_check_interval=30,
    )


def redis_client_from_block(block_name: str, *, timeout_s: float) -> redis.Redis:
    """The Redis of a saved ``prefect_redis.RedisDatabase`` block, with our timeouts and no retries.

    ``RedisDatabase.get_client()`` builds a client with redis-py's defaults (no timeout, 10 retries),
    so the block's fields are read here instead: ``connection_url`` when set (including the
    ``redis+sentinel://`` schemes, through prefect-redis's own ``redis_from_url``), else
    host/port/db/username/password/ssl.
    """
    from prefect_redis import RedisDatabase
    from prefect_redis.connection import redis_from_url

    block = RedisDatabase.load(block_name)
    options = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": _no_retry(),
    }
    if block.connection_url is not None:
        client: redis.Redis = redis_from_url(block.connection_url.get_secret_value(), **options)
        return client
    return redis.Redis(
        host=block.host,
        port=block.port,
        db=block.db,
        username=block.username.get_secret_value() if block.username else None,
        password=block.password.get_secret_value() if block.password else None,
        ssl=block.ssl,
        **options,  # type: ignore[arg-type]
    )
