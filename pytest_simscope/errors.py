"""Publishing errors.

A publishing failure never fails the test session: the publisher catches these, spools
what was not delivered to the offline queue and prints one warning line.

    SimscopeError
    ├── SettingsError          a setting has a bad value (the plugin turns it into UsageError)
    └── PublishError           a message could not be delivered
        ├── TransientError     worth retrying: connection lost, timeout, 5xx, broker busy
        └── PermanentError     retrying will not help: bad credentials, unroutable, 4xx
"""

from __future__ import annotations


class SimscopeError(Exception):
    """Base of every error this package raises on purpose."""


class SettingsError(SimscopeError):
    """A setting has a value that cannot be used; the message names it and its source."""


class PublishError(SimscopeError):
    """A message could not be delivered."""


class TransientError(PublishError):
    """A delivery failure that may go away if tried again."""


class PermanentError(PublishError):
    """A delivery failure that retrying will not cure."""
