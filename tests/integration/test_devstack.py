"""The throwaway servers and the test helpers built on them, against real processes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import nats
import psycopg
import pytest
from support.bridge import REPO_ROOT, BridgeProcess, log_event
from support.nats_helpers import fetch_stream_messages, stream_info
from support.waiting import wait_until, wait_until_async

from cdc_bridge.dev import devstack, nats_server, pg_account, pginstall, postgres_server
from cdc_bridge.dev.devstack import DevStack
from cdc_bridge.dev.nats_server import NatsServer
from cdc_bridge.dev.postgres_server import PostgresServer
from cdc_bridge.dev.processes import DevstackError

# --- PostgreSQL -----------------------------------------------------------------------------


def test_database_has_logical_wal_and_the_outbox_table(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
        conn.execute(
            "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, payload)"
            " VALUES ('ticket', '1', 'created', '{}')"
        )
        assert conn.execute("SELECT count(*) FROM public.outbox").fetchone() == (1,)


def test_replication_connection_identifies_the_system(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, replication="database", autocommit=True) as conn:
        row = conn.execute("IDENTIFY_SYSTEM").fetchone()
    assert row is not None
    system_id, timeline, xlogpos, dbname = row
    assert system_id and timeline == 1 and "/" in xlogpos
    assert dbname == pg_dsn.rsplit("/", 1)[1]


def test_dsn_is_tcp_on_loopback(pg_server: PostgresServer) -> None:
    assert pg_server.dsn("abc") == f"postgresql://postgres@127.0.0.1:{pg_server.port}/abc"
    with psycopg.connect(pg_server.dsn()) as conn:
        assert conn.execute("SELECT inet_server_addr()::text").fetchone() == ("127.0.0.1/32",)


def test_database_without_outbox_schema(pg_server: PostgresServer, unique_name: str) -> None:
    name = f"bare_{unique_name}"
    dsn = pg_server.create_database(name, outbox_schema=False)
    try:
        with psycopg.connect(dsn) as conn:
            found = conn.execute("SELECT to_regclass('public.outbox')").fetchone()
        assert found == (None,)
    finally:
        pg_server.drop_database(name)


def test_drop_database_drops_its_slots_even_while_streaming(
    pg_server: PostgresServer, unique_name: str
) -> None:
    name = f"slots_{unique_name}"
    dsn = pg_server.create_database(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (unique_name,))
    # An open replication connection holding the database must not block the drop
    holder = psycopg.connect(dsn, replication="database", autocommit=True)
    try:
        pg_server.drop_database(name)
    finally:
        holder.close()
    with psycopg.connect(pg_server.dsn()) as admin:
        slots = admin.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (unique_name,)
        ).fetchone()
        databases = admin.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
    assert slots == (0,) and databases == (0,)


def _count_rows(dsn: str) -> int:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM public.outbox").fetchone()
    assert row is not None
    return int(row[0])


def test_postgres_stop_restart_and_kill_keep_data_and_port(
    isolated_pg_server: PostgresServer,
) -> None:
    server = isolated_pg_server
    dsn = server.create_database("keep")
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, payload)"
            " VALUES ('a', '1', 'e', '{}')"
        )
    port = server.port
    for mode in ("fast", "smart", "immediate"):
        server.restart(mode)
        assert server.port == port
        assert _count_rows(dsn) == 1, mode

    postmaster = server.pid
    assert postmaster is not None
    server.kill()
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(postmaster, 0)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    server.start()  # crash recovery
    assert _count_rows(dsn) == 1

    server.stop()
    assert not server.running
    server.stop()  # stopping a stopped server is fine


def test_settings_override_defaults(devstack_tmp: Path) -> None:
    with PostgresServer(devstack_tmp / "pg", settings={"wal_level": "replica"}) as server:
        with psycopg.connect(server.dsn()) as conn:
            assert conn.execute("SHOW wal_level").fetchone() == ("replica",)
            assert conn.execute("SHOW max_replication_slots").fetchone() == ("20",)
        assert (devstack_tmp / "pg" / "postgres.log").exists()
    assert not server.running


def test_stop_mode_is_checked(pg_server: PostgresServer) -> None:
    with pytest.raises(ValueError, match="stop mode"):
        pg_server.stop("gently")


def test_refuses_a_port_in_use(devstack_tmp: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(DevstackError, match="already in use"):
            PostgresServer(devstack_tmp / "pg", port=port).start()
        with pytest.raises(DevstackError, match="already in use"):
            NatsServer(devstack_tmp / "nats", port=port).start()


def test_outbox_schema_is_shipped_in_the_package() -> None:
    text = postgres_server.outbox_schema_sql()
    assert "CREATE TABLE IF NOT EXISTS public.outbox" in text
    repo_copy = Path(__file__).resolve().parents[2] / "sql" / "outbox.sql"
    assert repo_copy.read_text(encoding="utf-8") == text


# --- finding binaries -----------------------------------------------------------------------


def test_missing_postgres_binaries_give_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(pginstall.PG_BINDIR_ENV, str(tmp_path / "no-such-dir"))
    with pytest.raises(DevstackError) as caught:
        PostgresServer(tmp_path / "pg")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("PostgreSQL server binaries (initdb, postgres) not found")
    assert "apt-get install postgresql" in message and pginstall.PG_BINDIR_ENV in message


def test_missing_nats_server_gives_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(nats_server.NATS_SERVER_ENV, str(tmp_path / "no-such-binary"))
    with pytest.raises(DevstackError) as caught:
        NatsServer(tmp_path / "nats")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("nats-server not found")


def test_binaries_are_found_by_default() -> None:
    assert (pginstall.find_pg_bindir() / "initdb").exists()
    assert nats_server.find_nats_server().name == "nats-server"


def test_the_default_postgresql_is_the_embedded_18_and_the_system_one_a_choice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(pginstall.PG_BINDIR_ENV, raising=False)
    installs = pginstall.find_pg_installs()
    assert installs[0].kind == "embedded" and installs[0].major == 18
    assert installs[0].has_plugin("pgoutput")
    system = pginstall.system_bindir()
    if system is not None:  # a machine with PostgreSQL installed may choose it
        assert [i.bindir for i in installs if i.kind == "system"] == [system]
        monkeypatch.setenv(pginstall.PG_BINDIR_ENV, str(system))
        assert pginstall.find_pg_install().bindir == system


def test_embedded_binaries_the_postgres_account_cannot_reach_are_run_from_a_copy(
    devstack_tmp: Path, unique_name: str
) -> None:
    account = pg_account.postgres_account()
    if account is None:
        pytest.skip("only root hands the servers to the postgres account")
    embedded = pginstall.embedded_bindir()
    assert embedded is not None
    # A site-packages the postgres account cannot enter, as in a 0700 home folder
    hidden = Path(tempfile.mkdtemp(prefix="cdcb-hidden-"))
    try:
        hidden.chmod(0o700)
        site = embedded.resolve().parents[2]
        package = embedded.resolve().parents[1].name
        for part in (package, f"{package}.libs"):
            if (site / part).is_dir():
                shutil.copytree(site / part, hidden / part, symlinks=True)
        bindir = hidden / package / "pginstall" / "bin"
        install = pginstall.PgInstall(bindir=bindir, kind="embedded", major=18)
        with PostgresServer(devstack_tmp / unique_name, install=install) as server:
            assert not str(server.bindir).startswith(str(hidden))
            with psycopg.connect(server.dsn()) as conn:
                row = conn.execute("SHOW server_version").fetchone()
            assert row is not None and row[0].startswith("18.")
        shutil.rmtree(server.bindir.parents[2], ignore_errors=True)
    finally:
        shutil.rmtree(hidden, ignore_errors=True)


# --- NATS -----------------------------------------------------------------------------------


async def test_jetstream_is_enabled(nats_url: str) -> None:
    client = await nats.connect(nats_url)
    try:
        info = await client.jetstream().account_info()
        assert info.limits is not None
    finally:
        await client.close()


async def _publish(url: str, stream: str, subject: str, count: int) -> None:
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        await js.add_stream(name=stream, subjects=[f"{subject}.>"])
        for index in range(count):
            ack = await js.publish(
                f"{subject}.{index}", f"m{index}".encode(), headers={"Nats-Msg-Id": f"id{index}"}
            )
            assert ack.seq == index + 1
    finally:
        await client.close()


async def test_nats_restart_and_kill_keep_jetstream_data(
    isolated_nats_server: NatsServer, unique_name: str
) -> None:
    server = isolated_nats_server
    stream = unique_name.upper()
    await _publish(server.url, stream, unique_name, 3)

    server.restart()
    messages = await fetch_stream_messages(server.url, stream)
    assert [(m.seq, m.subject, m.data) for m in messages] == [
        (1, f"{unique_name}.0", b"m0"),
        (2, f"{unique_name}.1", b"m1"),
        (3, f"{unique_name}.2", b"m2"),
    ]
    assert messages[0].headers["Nats-Msg-Id"] == "id0"

    server.kill()
    assert not server.running
    server.start()
    info = await stream_info(server.url, stream)
    assert info.state.messages == 3


async def test_fetch_skips_deleted_messages(nats_url: str, unique_name: str) -> None:
    stream = unique_name.upper()
    await _publish(nats_url, stream, unique_name, 4)
    client = await nats.connect(nats_url)
    try:
        await client.jsm().delete_msg(stream, 2)
    finally:
        await client.close()
    messages = await fetch_stream_messages(nats_url, stream)
    assert [m.seq for m in messages] == [1, 3, 4]


async def test_fetch_from_an_empty_stream(nats_url: str, unique_name: str) -> None:
    await _publish(nats_url, unique_name.upper(), unique_name, 0)
    assert await fetch_stream_messages(nats_url, unique_name.upper()) == []


# --- both together --------------------------------------------------------------------------


def test_devstack_starts_both_and_close_leaves_nothing_running(devstack_tmp: Path) -> None:
    stack = DevStack(devstack_tmp / "dev")
    with stack:
        env = stack.environment()
        with psycopg.connect(env["CDC_BRIDGE_DEV_DSN"]) as conn:
            assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
        assert env["CDC_BRIDGE_DEV_NATS_URL"] == stack.nats.url
        pids = [stack.postgres.pid, stack.nats.pid]
    assert not stack.postgres.running and not stack.nats.running
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_fresh_devstack_wipes_the_last_run_but_not_while_it_runs(devstack_tmp: Path) -> None:
    folder = devstack_tmp / "dev"
    with DevStack(folder, fresh=True) as first:
        with psycopg.connect(first.postgres.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE leftover (id int)")
        asyncio.run(_publish(first.nats.url, "LEFTOVER", "leftover", 1))
        with pytest.raises(DevstackError, match="still runs from") as caught:
            DevStack(folder, fresh=True).start()
        assert "\n" not in str(caught.value)
        with psycopg.connect(first.postgres.dsn()) as conn:  # the running stack is untouched
            assert conn.execute("SELECT to_regclass('leftover')").fetchone() == ("leftover",)
    assert (folder / devstack.MARKER_NAME).is_file()

    with DevStack(folder, fresh=True) as second:
        with psycopg.connect(second.postgres.dsn()) as conn:
            assert conn.execute("SELECT to_regclass('leftover')").fetchone() == (None,)
        with pytest.raises(nats.js.errors.NotFoundError):
            asyncio.run(stream_info(second.nats.url, "LEFTOVER"))


def test_fresh_devstack_never_wipes_a_folder_it_did_not_create(tmp_path: Path) -> None:
    precious = tmp_path / "mine" / "precious.txt"
    precious.parent.mkdir()
    precious.write_text("keep me")
    with pytest.raises(DevstackError) as caught:
        DevStack(precious.parent, fresh=True).start()
    message = str(caught.value)
    assert "\n" not in message and "is not wiped" in message and "--dir" in message
    assert precious.read_text() == "keep me"
    with pytest.raises(DevstackError, match="not a folder cdc-bridge dev created"):
        DevStack(precious, fresh=True).start()
    assert precious.read_text() == "keep me"


def _demo_created_tickets(lines: list[str]) -> list[str]:
    """The ticket ids of the demo's created events among `cdc-bridge dev --demo`'s lines."""
    return [
        json.loads(line.split("  ")[-1])["ticket"]
        for line in lines
        if line.startswith("  <- events.ticket.created ")
    ]


def test_cdc_bridge_dev_starts_from_scratch_every_time(devstack_tmp: Path, tmp_path: Path) -> None:
    """The second `cdc-bridge dev --demo` must not resume the first one's stream: its demo
    starts at T-00001 again, and the stream would hold two T-00001 tickets."""
    command = [
        sys.executable, "-m", "cdc_bridge", "dev", "--demo", "--dir", str(devstack_tmp / "dev"),
        "--config", str(REPO_ROOT / "config" / "dev.yaml"),
    ]  # fmt: skip
    for run in ("first", "second"):
        with BridgeProcess({}, tmp_path / run, command=command) as dev:
            dev.wait_for_log(lambda line: "<- events.ticket.created" in line, timeout=60)
            url = dev.wait_for_log(lambda line: line.startswith("  NATS ")).split()[-1]

            def created_tickets(url: str = url) -> list[str]:
                return [
                    json.loads(m.data)["ticket"]
                    for m in asyncio.run(fetch_stream_messages(url, "OUTBOX"))
                    if m.subject == "events.ticket.created"
                ]

            # The demo prints what crosses NATS; the stream holds it once its batch commits.
            tickets = wait_until(created_tickets, timeout=10)
            assert tickets[0] == "T-00001" and len(tickets) == len(set(tickets)), (run, tickets)
            dev.send_signal(signal.SIGINT)
            assert dev.wait_for_exit(timeout=30) == 0
            assert _demo_created_tickets(dev.stdout_lines)[0] == "T-00001"


# --- test helpers ---------------------------------------------------------------------------

# A stand-in daemon: echoes its config file, logs JSON, exits 0 on SIGTERM.
DUMMY_DAEMON = textwrap.dedent(
    """
    import json, signal, sys, time
    config_path = sys.argv[1]
    print(json.dumps({"event": "config", "text": open(config_path).read()}), flush=True)
    print("plain stderr line", file=sys.stderr, flush=True)
    def stop(signum, frame):
        print(json.dumps({"event": "stopping", "signal": signum}), flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    print(json.dumps({"event": "ready", "pid": 1}), flush=True)
    while True:
        time.sleep(0.05)
    """
)


DUMMY_CONFIG = {"nats": {"servers": ["nats://127.0.0.1:1"]}}
DUMMY_COMMAND = [sys.executable, "-c", DUMMY_DAEMON, "{config}"]


def test_bridge_process_captures_output_and_terminates(tmp_path: Path) -> None:
    with BridgeProcess(DUMMY_CONFIG, tmp_path, command=DUMMY_COMMAND) as bridge:
        bridge.wait_for_log(log_event("ready"), timeout=20)
        config_line = bridge.wait_for_log('"event": "config"')
        assert "nats://127.0.0.1:1" in config_line
        bridge.wait_for_log("plain stderr line")
        assert bridge.stderr_lines == ["plain stderr line"]
        assert bridge.running
        mark = bridge.mark()
        assert bridge.terminate() == 0
        assert bridge.wait_for_log(log_event("stopping", signal=signal.SIGTERM), since=mark)
        assert [r["event"] for r in bridge.json_records()] == ["config", "ready", "stopping"]


def test_bridge_process_kill_and_early_exit(make_bridge: Callable[..., BridgeProcess]) -> None:
    bridge = make_bridge(DUMMY_CONFIG, command=DUMMY_COMMAND)  # killed at teardown if need be
    bridge.wait_for_log("ready", timeout=20)
    assert bridge.kill() == -signal.SIGKILL
    # The process is gone: waiting for a line it never wrote fails at once, not at the deadline
    with pytest.raises(AssertionError, match="exited without logging"):
        bridge.wait_for_log("never printed", timeout=60)


def test_bridge_process_default_command_runs_the_package(tmp_path: Path) -> None:
    bridge = BridgeProcess({}, tmp_path)
    assert bridge.command[1:4] == ["-m", "cdc_bridge", "run"]
    assert bridge.command[-3:] == [str(tmp_path / "bridge.yaml"), "--log-format", "json"]


def test_wait_until_returns_the_value_or_fails_with_the_message() -> None:
    calls: list[int] = []

    def third_time_lucky() -> int:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else 0

    assert wait_until(third_time_lucky, timeout=5, interval=0.001) == 3
    with pytest.raises(AssertionError, match="never true"):
        wait_until(lambda: False, timeout=0.05, message="never true")


async def test_wait_until_async_accepts_coroutines() -> None:
    calls: list[int] = []

    async def second_time() -> bool:
        calls.append(1)
        return len(calls) >= 2

    assert await wait_until_async(second_time, timeout=5, interval=0.001) is True
    with pytest.raises(AssertionError, match="nope"):
        await wait_until_async(lambda: None, timeout=0.05, message="nope")


# --- no server outlives its owner -----------------------------------------------------------

HOLD_SERVERS = """
import json
import time
from pathlib import Path

from cdc_bridge.dev.nats_server import NatsServer
from cdc_bridge.dev.postgres_server import PostgresServer


def test_hold_servers() -> None:
    base = Path({base!r})
    nats = NatsServer(base / "nats")
    nats.start()
    pg = PostgresServer(base / "pg")
    pg.start()
    Path({pids!r}).write_text(json.dumps([nats.pid, pg.pid]))
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Running, and not a zombie (gone in all but name: its parent, the killed run, is
    gone too). The process may vanish while it is looked at."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def test_a_killed_test_run_leaves_no_server_behind(devstack_tmp: Path) -> None:
    """kill -9 of a pytest run that holds a PostgreSQL and a nats-server: the kernel ends
    both (dev/processes.py dies_with_parent), with every PostgreSQL backend."""
    pids_file = devstack_tmp / "pids.json"
    inner = devstack_tmp / "test_hold.py"
    inner.write_text(HOLD_SERVERS.format(base=str(devstack_tmp), pids=str(pids_file)))
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull,
         "--rootdir", str(devstack_tmp), str(inner)],
        cwd=devstack_tmp, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(pids_file.exists, timeout=120, message="the inner run never started its servers")
        nats_pid, pg_pid = json.loads(pids_file.read_text())
        assert _alive(nats_pid) and _alive(pg_pid)
        children = _children_of(pg_pid)
        assert children, "a running postmaster has its background processes"
    finally:
        run.kill()
        run.wait()
    survivors = [*children, nats_pid, pg_pid]
    wait_until(
        lambda: not any(_alive(pid) for pid in survivors),
        timeout=30,
        message=f"servers outlived their killed test run: {[p for p in survivors if _alive(p)]}",
    )


def _children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
