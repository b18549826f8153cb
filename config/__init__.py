"""Configuration: every limit, price and connection in one place (see :mod:`config.settings`)."""

from config.settings import Settings, get_settings

__all__ = ["Settings", "get_settings"]
