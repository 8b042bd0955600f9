from cdc_bridge.core.snapshots import snapshot_msg_id, valid_snapshot_id


def test_a_short_printable_key_reads_as_itself() -> None:
    assert snapshot_msg_id("s1", "public.orders", ("42",)) == "s1:public.orders:42"
    assert snapshot_msg_id("s1", "public.lines", ("42", "7")) == "s1:public.lines:42,7"


def test_keys_that_would_read_alike_are_hashed_apart() -> None:
    one = snapshot_msg_id("s1", "public.t", ("a,b", "c"))
    two = snapshot_msg_id("s1", "public.t", ("a", "b,c"))
    assert one != two
    assert one.startswith("s1:public.t:#") and two.startswith("s1:public.t:#")


def test_long_null_or_unprintable_keys_are_hashed_deterministically() -> None:
    long_key = ("x" * 500,)
    assert snapshot_msg_id("s", "public.t", long_key) == snapshot_msg_id("s", "public.t", long_key)
    assert len(snapshot_msg_id("s", "public.t", long_key)) < 80
    assert snapshot_msg_id("s", "public.t", (None,)) != snapshot_msg_id("s", "public.t", ("",))
    assert "\n" not in snapshot_msg_id("s", "public.t", ("a\nb",))
    assert snapshot_msg_id("s", "public.t", ("é",)).startswith("s:public.t:#")


def test_snapshot_ids() -> None:
    assert valid_snapshot_id("orders-20261208T021500Z")
    assert not valid_snapshot_id("")
    assert not valid_snapshot_id("a:b")
    assert not valid_snapshot_id("x" * 65)
    assert not valid_snapshot_id("é")
