"""Redis connections: a URL (redis://, rediss://, unix://) or a saved prefect-redis block. Private."""

from __future__ import annotations

import redis


def open_redis_client(url: str, *, timeout_s: float) -> redis.Redis:
    """A client whose every call gives up after ``timeout_s``: a slow Redis is an unavailable one."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry_on_timeout=False,
        health_check_interval=30,
    )


def redis_client_from_block(block_name: str, *, timeout_s: float) -> redis.Redis:
    """The Redis of a saved ``prefect_redis.RedisDatabase`` block, with our timeouts."""
    from prefect_redis import RedisDatabase

    block = RedisDatabase.load(block_name)
    if block.connection_url is not None:
        url = block.connection_url.get_secret_value()
        return open_redis_client(url, timeout_s=timeout_s)
    password = block.password.get_secret_value() if block.password else None
    return redis.Redis(
        host=block.host,
        port=block.port,
        db=block.db,
        username=block.username.get_secret_value() if block.username else None,
        password=password,
        ssl=block.ssl,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )
