"""Reconcile on the bridge's subject space (issue 17) against a real nats-server: the
tail read stays bounded however busy other writers of the stream are, and another
bridge's messages inside the space are refused with both sources named."""

from __future__ import annotations

import time

import nats
import pytest

from cdc_bridge.core.errors import FatalError
from cdc_bridge.sink.reconcile import read_space_tail, read_stream_tail

OURS = "7301/ours"


async def _fill(url: str, prefix: str, writers: int, per_writer: int) -> None:
    """``writers`` bridges' messages interleaved, the first writer's being ours (its
    LSNs rise with the index), each writer in its own space ``prefix.svcN.>``."""
    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_stream(name=prefix.upper(), subjects=[f"{prefix}.>"])
        for n in range(per_writer):
            for w in range(writers):
                headers = {
                    "Nats-Msg-Id": f"{w}-{n}",
                    "Cdc-Lsn": f"0/{0x1000 + n * 0x10:X}",
                    "Cdc-Index": "0",
                    "Cdc-Source": OURS if w == 0 else f"7301/other{w}",
                }
                await nc.publish(f"{prefix}.svc{w}.x", b"{}", headers=headers)
            if n % 100 == 99:
                await nc.flush()
        await nc.flush()
        deadline = time.monotonic() + 10
        while (await nc.jetstream().stream_info(prefix.upper())).state.messages < (
            writers * per_writer
        ):
            assert time.monotonic() < deadline, "the stream did not fill"
    finally:
        await nc.close()


async def test_the_tail_read_of_a_space_skips_other_writers(
    nats_url: str, unique_name: str
) -> None:
    await _fill(nats_url, unique_name, writers=10, per_writer=1000)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        stream = unique_name.upper()
        started = time.monotonic()
        tail = await read_space_tail(js, stream, f"{unique_name}.svc0.>", OURS, 0, 100)
        elapsed = time.monotonic() - started
        assert tail.complete and tail.newest == (0x1000 + 999 * 0x10, 0)
        assert tail.scanned == 100  # only ours: the nine others' messages cost nothing
        assert tail.last_seq == 10_000 - 9  # the space's last, not the stream's
        assert elapsed < 5, elapsed
        # The stream-wide walk reads through every writer's messages.
        wide = await read_stream_tail(js, stream, OURS, 0, 100)
        assert wide.newest == tail.newest and wide.scanned >= 991
    finally:
        await nc.close()


async def test_an_empty_space_names_sequence_zero(nats_url: str, unique_name: str) -> None:
    await _fill(nats_url, unique_name, writers=3, per_writer=10)
    nc = await nats.connect(nats_url)
    try:
        tail = await read_space_tail(
            nc.jetstream(), unique_name.upper(), f"{unique_name}.none.>", OURS, 0, 100
        )
        assert (tail.last_seq, tail.newest, tail.complete) == (0, None, True)
    finally:
        await nc.close()


async def test_another_bridge_inside_the_space_is_refused_naming_both(
    nats_url: str, unique_name: str
) -> None:
    await _fill(nats_url, unique_name, writers=3, per_writer=10)
    nc = await nats.connect(nats_url)
    try:
        with pytest.raises(FatalError) as refused:
            # A space that overlaps the other bridges' spaces.
            await read_space_tail(
                nc.jetstream(), unique_name.upper(), f"{unique_name}.>", OURS, 0, 100
            )
        message = str(refused.value)
        assert "7301/other2" in message and OURS in message
        assert f"nats.subject_space '{unique_name}.>'" in message
        assert "\n" not in message
    finally:
        await nc.close()
