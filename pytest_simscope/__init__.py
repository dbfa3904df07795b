"""pytest-simscope: report every pytest run to Simscope as a live regression."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
