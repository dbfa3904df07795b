"""pytest-simscope: report every pytest run to Simscope as a live regression."""

from __future__ import annotations

import os
import sys

# Where imports came from when the plugin was loaded (before pytest adds test folders):
# the delivery process starts without the site module and searches these instead.
STARTUP_PATH = tuple(sys.path)
try:
    STARTUP_CWD = os.getcwd()
except OSError:  # started in a folder that was removed since
    STARTUP_CWD = ""

__version__ = "0.1.0"
__all__ = ["__version__"]
