"""The transport interface.

A transport is a small object with one ``send`` method and ``close()``: the publisher hands
it envelopes in order and does not know which kind it drives (offline queue, JSON-lines
recorder, AMQP, HTTP, the tunnel command).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

from pytest_simscope.messages import Envelope


class Transport:
    """Deliver envelopes somewhere.

    ``send`` delivers every envelope of *batch*, in order, or raises a
    :class:`~pytest_simscope.errors.PublishError`; on error, the envelopes of the batch
    counted in ``delivered`` (set before raising) were delivered and the rest were not.
    A transport may combine envelopes (for example several ``job-finish`` into one
    ``batch-job-finish``) as long as order is kept.
    """

    #: A short, secret-free description for the terminal ("offline queue .simscope/queue").
    name: str = "transport"
    #: How many envelopes of the last failed ``send`` were delivered before the failure.
    delivered: int = 0
    #: True for a transport whose delivery is a local file (no network, never transient).
    local: bool = False

    def send(self, batch: Sequence[Envelope]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the transport holds; it is not used again."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def unroutable_message(exchange: str, routing_key: str | None, vhost: str | None) -> str:
    """What a broker's refusal to route a message means, for AMQP and HTTP alike."""
    if exchange:
        return f"message unroutable: exchange {exchange!r} routes key {routing_key!r} to no queue"
    return f"message unroutable: queue {routing_key!r} does not exist on virtual host {vhost!r}"


# The tunnel transport's default command (here, so that naming it loads no subprocess code).
DEFAULT_TUNNEL_COMMAND = (
    "simscope-tunnel --config={config} --publish {type} --regression={regression} {file}"
)
