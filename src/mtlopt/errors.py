"""Exceptions raised by mtlopt."""

from __future__ import annotations

__all__ = ["NonFiniteError"]


class NonFiniteError(FloatingPointError):
    """A loss or a gradient is NaN or infinite (raised by default instead of training on it)."""
