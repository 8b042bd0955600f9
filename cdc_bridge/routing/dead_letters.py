"""What replaces a message JetStream can never store (pure): its dead letter, or a stop.

The publisher learns late that a message cannot be stored (no stream captures its
subject, or with the bridge's headers it is over the server's ``max_payload``). It asks
this policy, built from the routing config, for the replacement instead of calling
back into the pipeline.
"""

from __future__ import annotations

from cdc_bridge.core.headers import BRIDGE_HEADERS, TX_LAST_HEADER
from cdc_bridge.core.wire_text import printable
from cdc_bridge.routing.router import Outbound, Poison, Router

POISON_PROCEDURE = "docs/operating.md#incident-a-poison-transaction-stops-the-bridge"
# The fix of a row no route can publish, and nowhere else to go: the config, or a skip.
POISON_FIX = (
    "fix: add a dead_letter subject, or a route that handles the row (`cdc-bridge routes "
    "test --config FILE --row '{...}'` shows what it would do), then start the bridge; or "
    "skip its transaction deliberately (`cdc-bridge slots peek`, then `cdc-bridge slots "
    f"advance --past-xid XID`): {POISON_PROCEDURE}"
)
# The fix of a dead letter that cannot be stored either.
DEAD_LETTER_FIX = (
    "fix: make a stream store dead_letter.subject, within the server's max_payload "
    "(`cdc-bridge check --config FILE` says what is missing), then start the bridge; or "
    f"skip the row's transaction deliberately: {POISON_PROCEDURE}"
)


def unsendable_dead_letter(msg_id: str, problem: str) -> PoisonRowError:
    """The error that stops the bridge when a message's dead letter cannot be sent either,
    even without its body (both publishers)."""
    return PoisonRowError(
        f"the dead letter of id {printable(msg_id)} cannot be sent either: {problem} "
        f"({DEAD_LETTER_FIX})"
    )


class PoisonRowError(Exception):
    """A row that cannot be published and has nowhere else to go: stop, confirm nothing past it."""


class DeadLetterPolicy:
    def __init__(self, router: Router) -> None:
        self._router = router

    def replacement(
        self, subject: str, data: bytes, headers: dict[str, str], reason: str
    ) -> tuple[str, bytes, dict[str, str]]:
        """The dead letter (subject, data, headers) for a message JetStream can never
        store, with the bridge's headers of the original (``headers``).

        Raises PoisonRowError when there is no dead_letter subject, or when the message
        is on it already.
        """
        msg_id = headers.get("Nats-Msg-Id", "")
        original = Outbound(subject=subject, data=data, headers=headers, msg_id=msg_id, route="")
        outcome = self._router.dead_letter(original, reason, msg_id)
        if type(outcome) is Poison:
            raise PoisonRowError(
                f"row id={printable(msg_id)} ({headers.get('Cdc-Table')}): {reason}; no "
                f"dead_letter is configured, so the bridge stops without confirming past it "
                f"({POISON_FIX})"
            )
        assert type(outcome) is Outbound
        if subject == outcome.subject:
            raise PoisonRowError(
                f"the dead-letter subject itself cannot be stored: {reason} ({DEAD_LETTER_FIX})"
            )
        replacement_headers = outcome.headers
        for key in BRIDGE_HEADERS:
            replacement_headers[key] = headers[key]
        # In the place of its transaction's last event, it is that last event.
        tx_last = headers.get(TX_LAST_HEADER)
        if tx_last is not None:
            replacement_headers[TX_LAST_HEADER] = tx_last
        replacement_headers["Nats-Msg-Id"] = outcome.msg_id  # made sendable by the router
        return outcome.subject, outcome.data, replacement_headers
