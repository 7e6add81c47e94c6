"""Errors raised for bad data. The CLI turns them into one line and a non-zero exit."""

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad or unusable input data: the message names the file, folder or class at fault."""
