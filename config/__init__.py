"""Configuration: every limit, price and connection, one class per concern, and their union
:class:`Settings` (see :mod:`config.settings`); the cost model in :mod:`config.cost_model`."""

from config.settings import Settings, get_settings

__all__ = ["Settings", "get_settings"]
