"""torc-stress: stress-test a torc-compatible workflow server the way a real cluster does."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
