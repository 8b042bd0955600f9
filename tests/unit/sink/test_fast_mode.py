"""nats.fast_ingest: which server and stream give fast-ingest batches (fast_mode.py)."""

from __future__ import annotations

import pytest

from cdc_bridge.core.errors import FatalError
from cdc_bridge.sink.fast_mode import decide_fast_mode


def test_false_is_off_whatever_the_server() -> None:
    mode = decide_fast_mode(False, (2, 15, 1), "S", True)
    assert not mode.enabled and "nats.fast_ingest is false" in mode.reason


@pytest.mark.parametrize("setting", ["auto", True])
def test_on_with_2_14_and_allow_batched(setting: str | bool) -> None:
    assert decide_fast_mode(setting, (2, 14, 0), "S", True).enabled  # type: ignore[arg-type]
    created = decide_fast_mode(setting, (2, 15, 1), "S", True, stream_exists=False)  # type: ignore[arg-type]
    assert created.enabled and "created with allow_batched" in created.reason


@pytest.mark.parametrize(
    ("version", "allows", "exists", "says"),
    [
        ((2, 12, 3), True, True, "no fast-ingest batches (2.14+ needed)"),
        (None, True, True, "(version unknown)"),
        ((2, 15, 1), False, True, "stream S has allow_batched off"),
        ((2, 15, 1), False, False, "nats.stream.allow_batched false"),
    ],
)
def test_auto_falls_back_and_true_stops(
    version: tuple[int, int, int] | None, allows: bool, exists: bool, says: str
) -> None:
    mode = decide_fast_mode("auto", version, "S", allows, stream_exists=exists)
    assert not mode.enabled and says in mode.reason
    with pytest.raises(FatalError, match=r"nats\.fast_ingest is true") as caught:
        decide_fast_mode(True, version, "S", allows, stream_exists=exists)
    assert says in str(caught.value)
