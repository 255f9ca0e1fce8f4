"""The library version (one place; the package face and map metadata read it)."""

__version__ = "0.1.0"
