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


def _not_for_assertion_rewriting() -> None:
    """Take this package off the names pytest rewrites the asserts of.

    pytest marks every installed plugin's package for assertion rewriting, so its modules
    are imported through pytest's own loader: about 25 ms more a run (and each xdist
    worker), and where the rewritten code cannot be cached (``PYTHONDONTWRITEBYTECODE``,
    a read-only site-packages) about 200 ms, every run.  This package holds no assertion
    helpers for tests, so it asks for none of that.  Through pytest's private attributes,
    checked first: if they change, the package is rewritten as before, no worse.
    """
    for finder in sys.meta_path:
        if type(finder).__name__ != "AssertionRewritingHook":
            continue
        marked = getattr(finder, "_must_rewrite", None)
        cache = getattr(finder, "_marked_for_rewrite_cache", None)
        if isinstance(marked, set) and isinstance(cache, dict) and __name__ in marked:
            marked.discard(__name__)
            cache.clear()


_not_for_assertion_rewriting()
