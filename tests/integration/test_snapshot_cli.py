"""`cdc-bridge snapshot` against a real PostgreSQL: what it writes into the WAL.

The messages are read back from a test_decoding slot (the config's slot: the command
requires it to exist), which prints a transactional message as
``message: transactional: 1 prefix: <prefix>, sz: <n> content:<text>``. The bridge's
side (messages -> R events) is tested with the pipeline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from support.bridge import REPO_ROOT
from support.waiting import wait_until

from cdc_bridge.cli.json_keys import SNAPSHOT_KEYS
from cdc_bridge.cli.main import main
from cdc_bridge.core.snapshots import SNAPSHOT_FORMAT_VERSION, SNAPSHOT_PREFIX

# Run on every PostgreSQL major version installed (embedded 18, system 15)
pytestmark = pytest.mark.both_postgres

PROGRESS = "public.cdc_bridge_snapshots"
_MESSAGE_HEAD = f"message: transactional: 1 prefix: {SNAPSHOT_PREFIX}, sz: "


@dataclass(frozen=True, slots=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def snap(pg_dsn: str, unique_name: str, tmp_path: Path) -> Iterator[SnapshotSetup]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            """
            CREATE TABLE public.items (
                id integer PRIMARY KEY,
                name text,
                price numeric(10, 2),
                tags text[],
                attrs jsonb,
                seen timestamptz,
                flag boolean,
                dropped_later int,
                doubled integer GENERATED ALWAYS AS (id * 2) STORED
            );
            ALTER TABLE public.items DROP COLUMN dropped_later;
            CREATE TABLE public.lines (order_id int, line smallint, note text,
                                       PRIMARY KEY (order_id, line));
            CREATE TABLE public.nokey (a int, b text);
            CREATE TABLE public.other (id int PRIMARY KEY);
            """
        )
        conn.execute(
            "SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (unique_name,)
        )
    config = {
        "postgres": {"dsn": pg_dsn, "slot": unique_name, "publication": unique_name,
                     "connect_timeout": "5s"},
        "nats": {"servers": ["nats://127.0.0.1:1"],
                 "stream": {"name": unique_name.upper(), "subjects": [f"{unique_name}.>"]}},
        "outbox": {"table": [], "change_tables": ["public.items", "public.lines", "public.nokey"]},
        "routes": [{"name": "changes", "subject": f"{unique_name}.{{action}}",
                    "payload": "change"}],
    }  # fmt: skip
    path = tmp_path / "snapshot.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    yield SnapshotSetup(pg_dsn, unique_name, str(path))


@dataclass(frozen=True, slots=True)
class SnapshotSetup:
    dsn: str
    slot: str
    config: str

    def execute(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def messages(self) -> list[dict[str, Any]]:
        """The snapshot messages committed so far, in WAL order (peek: nothing consumed)."""
        rows = self.execute(
            "SELECT data FROM pg_logical_slot_peek_changes(%s, NULL, NULL)", (self.slot,)
        )
        found = []
        for (data,) in rows:
            if data.startswith(_MESSAGE_HEAD):
                found.append(json.loads(data.split(" content:", 1)[1]))
        return found

    def progress(self, table: str) -> list[tuple[Any, ...]]:
        return self.execute(
            f"SELECT snapshot_id, where_clause, chunk_size, last_key, rows, chunks, "
            f"finished_at IS NOT NULL FROM {PROGRESS} WHERE table_name = %s ORDER BY started_at",
            (table,),
        )


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> Run:
    capsys.readouterr()
    code = main(["snapshot", *args])
    out, err = capsys.readouterr()
    return Run(code, out, err)


def spawn(setup: SnapshotSetup, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cdc_bridge", "snapshot", "--config", setup.config, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )


def fill_items(setup: SnapshotSetup, count: int) -> None:
    setup.execute(
        """
        INSERT INTO public.items (id, name, price, tags, attrs, seen, flag)
        SELECT g, CASE WHEN g %% 7 = 0 THEN NULL ELSE 'item ' || g || ' 100%%' END,
               g * 1.25, ARRAY['a', 'b,' || g], jsonb_build_object('n', g, 'q', 'x"y'),
               timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute', g %% 2 = 0
        FROM generate_series(1, %s) g
        """,
        (count,),
    )


def rows_as_text(setup: SnapshotSetup, where: str = "true") -> dict[str, list[Any]]:
    """Every row of items as the columns' output text (what pgoutput sends: a boolean
    is 't', not 'true'), by id: what a message must hold."""
    columns = ", ".join(
        f"CASE WHEN {c} IS NULL THEN NULL ELSE format('%%s', {c}) END"
        for c in ("id", "name", "price", "tags", "attrs", "seen", "flag")
    )
    rows = setup.execute(f"SELECT {columns} FROM public.items WHERE {where} ORDER BY items.id", ())
    return {row[0]: list(row) for row in rows}


def values_of(message: dict[str, Any]) -> list[Any]:
    return [column[3] for column in message["columns"]]


def test_500_rows_become_500_messages_holding_the_rows(
    snap: SnapshotSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    fill_items(snap, 500)
    run = cli(capsys, "--config", snap.config, "--table", "items", "--chunk", "100", "--yes",
              "--json")  # fmt: skip
    assert run.code == 0, run.err
    document = run.json()
    assert tuple(document) == SNAPSHOT_KEYS
    assert document["rows"] == 500 and document["chunks"] == 5 and document["finished"]
    assert document["resumed_from"] is None and document["table"] == "public.items"
    snapshot_id = document["snapshot_id"]
    assert snapshot_id.startswith("items-")

    messages = snap.messages()
    assert len(messages) == 500
    first = messages[0]
    assert {k: first[k] for k in ("v", "snapshot", "schema", "table", "key")} == {
        "v": SNAPSHOT_FORMAT_VERSION,
        "snapshot": snapshot_id,
        "schema": "public",
        "table": "items",
        "key": ["id"],
    }
    # table order, no dropped or generated column; format_type names and type oids
    assert [c[:3] for c in first["columns"]] == [
        ["id", "integer", 23],
        ["name", "text", 25],
        ["price", "numeric(10,2)", 1700],
        ["tags", "text[]", 1009],
        ["attrs", "jsonb", 3802],
        ["seen", "timestamp with time zone", 1184],
        ["flag", "boolean", 16],
    ]
    assert [m["columns"][6][3] for m in messages[:2]] == ["f", "t"]
    expected = rows_as_text(snap)
    assert [values_of(m) for m in messages] == list(expected.values())  # key order, exact
    assert snap.progress("public.items") == [(snapshot_id, None, 100, ["500"], 500, 5, True)]


def test_where_and_chunk_with_a_composite_key(
    snap: SnapshotSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    snap.execute(
        "INSERT INTO public.lines SELECT o, l, 'n' || o || '-' || l FROM generate_series(1, 30) o,"
        " generate_series(1, 4) l"
    )
    where = "note LIKE 'n1%' AND line <> 2 -- a comment"
    run = cli(capsys, "--config", snap.config, "--table", "public.lines", "--where", where,
              "--chunk", "7", "--yes")  # fmt: skip
    assert run.code == 0, run.err
    expected = snap.execute(
        "SELECT order_id::text, line::text, note FROM public.lines "
        "WHERE note LIKE 'n1%%' AND line <> 2 ORDER BY order_id, line"
    )
    messages = snap.messages()
    assert [tuple(values_of(m)) for m in messages] == expected
    assert {tuple(m["key"]) for m in messages} == {("order_id", "line")}
    chunks = -(-len(expected) // 7)
    assert f"wrote {len(expected)} rows in {chunks} chunks" in run.out
    assert "rows         " + where in run.out
    (progress,) = snap.progress("public.lines")
    assert progress[1:] == (where, 7, ["19", "4"], len(expected), chunks, True)


def test_without_yes_it_shows_the_plan_writes_nothing_and_exits_1(
    snap: SnapshotSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    fill_items(snap, 20)
    run = cli(capsys, "--config", snap.config, "--table", "items", "--where", "id > 5")
    assert run.code == 1
    assert "about 15 rows" in run.out and "(new)" in run.out
    assert run.out.rstrip().endswith("run again with --yes to write it")
    dry = cli(capsys, "--config", snap.config, "--table", "items", "--dry-run", "--yes")
    assert dry.code == 0 and "about 20 rows" in dry.out
    assert snap.messages() == []
    assert snap.execute("SELECT to_regclass(%s)", (PROGRESS,)) == [(None,)]


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("public.nokey", "table public.nokey has no primary key: a snapshot reads it in key order"),
        ("public.other", "public.other is not in outbox.change_tables"),
        ("public.ghost", None),
    ],
)
def test_refused_tables_get_one_line(
    snap: SnapshotSetup, capsys: pytest.CaptureFixture[str], table: str, expected: str | None
) -> None:
    if table == "public.ghost":  # in change_tables, but not in the database
        config = yaml.safe_load(Path(snap.config).read_text())
        config["outbox"]["change_tables"].append(table)
        Path(snap.config).write_text(yaml.safe_dump(config))
        expected = "table public.ghost does not exist"
    run = cli(capsys, "--config", snap.config, "--table", table, "--yes")
    assert run.code == 1
    assert run.out == ""
    assert run.err.startswith(f"cdc-bridge: {expected}") and run.err.count("\n") == 1


def test_a_role_that_cannot_lock_rows_is_told_the_grant(
    snap: SnapshotSetup, capsys: pytest.CaptureFixture[str], unique_name: str
) -> None:
    role = f"{unique_name}_ro"
    snap.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'; GRANT SELECT ON public.items TO {role}")
    try:
        dsn = psycopg.conninfo.make_conninfo(snap.dsn, user=role, password="pw")
        run = cli(capsys, "--config", snap.config, "--dsn", dsn, "--table", "items", "--yes")
        assert run.code == 1
        assert run.err.startswith(
            f"cdc-bridge: role {role} lacks UPDATE on public.items (or one of its columns: "
            "FOR SHARE needs it)"
        )
        assert "pw" not in run.err
    finally:
        snap.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


@pytest.fixture
def blocked_row(snap: SnapshotSetup) -> Iterator[psycopg.Connection[Any]]:
    """An open transaction holding row id 3001 of items: a snapshot's FOR SHARE waits
    there, so a test can stop or race it at a known chunk."""
    fill_items(snap, 5000)
    conn = psycopg.connect(snap.dsn)
    conn.execute("UPDATE public.items SET name = name WHERE id = 3001")
    yield conn
    conn.close()


def backend_gone(setup: SnapshotSetup, pid: int) -> bool:
    return not setup.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))


def snapshot_backend(setup: SnapshotSetup) -> int | None:
    """The pid of the command's session waiting on the blocked row."""
    rows = setup.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'cdc-bridge-ops' "
        "AND wait_event_type = 'Lock' AND datname = current_database()"
    )
    return int(rows[0][0]) if rows else None


def test_killed_mid_run_it_resumes_after_the_last_committed_chunk_and_writes_each_row_once(
    snap: SnapshotSetup,
    blocked_row: psycopg.Connection[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    process = spawn(snap, "--table", "items", "--chunk", "100", "--yes", "--id", "fill-1")
    try:
        backend = wait_until(lambda: snapshot_backend(snap), timeout=30)
        # 30 chunks (rows 1..3000) committed, the 31st waits on row 3001
        assert snap.progress("public.items")[0][3:6] == (["3000"], 3000, 30)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        blocked_row.rollback()  # the orphaned backend goes on, finds its client gone, aborts
        wait_until(lambda: backend_gone(snap, backend), timeout=30)
    finally:
        process.kill()
        process.communicate()
    assert len(snap.messages()) == 3000  # the chunk in flight left nothing

    run = cli(capsys, "--config", snap.config, "--table", "items", "--chunk", "100", "--yes")
    assert run.code == 0, run.err
    assert "resuming snapshot fill-1 after 3,000 rows" in run.out
    assert "wrote 2,000 rows in 20 chunks" in run.out
    ids = Counter(m["columns"][0][3] for m in snap.messages())
    assert len(ids) == 5000 and set(ids.values()) == {1}  # every row, once
    assert {m["snapshot"] for m in snap.messages()} == {"fill-1"}
    assert snap.progress("public.items") == [("fill-1", None, 100, ["5000"], 5000, 50, True)]


def test_a_second_snapshot_of_the_table_is_refused_and_sigterm_stops_at_a_chunk(
    snap: SnapshotSetup,
    blocked_row: psycopg.Connection[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    process = spawn(snap, "--table", "items", "--chunk", "1000", "--yes")
    try:
        backend = wait_until(lambda: snapshot_backend(snap), timeout=30)
        second = cli(capsys, "--config", snap.config, "--table", "items", "--yes")
        assert second.code == 1
        assert second.err == (
            f"cdc-bridge: another snapshot of public.items is running (pid {backend}): wait "
            "for it, or stop it (it resumes where it stopped); a session whose command was "
            f"killed holds it until it ends (SELECT pg_terminate_backend({backend}))\n"
        )
        process.send_signal(signal.SIGTERM)  # asks to stop after the chunk in flight
        blocked_row.rollback()
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 1, err
    assert "wrote 4,000 rows in 4 chunks" in out and "is not finished" in out
    (progress,) = snap.progress("public.items")
    assert progress[3:] == (["4000"], 4000, 4, False)
    assert len(snap.messages()) == 4000


def test_a_key_moved_forward_under_a_chunk_skips_nothing(
    snap: SnapshotSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    """A writer moves the key of the row that ends chunk 31 far ahead while the chunk
    waits for it. The chunk's range was fixed before locking, so the re-read row falls
    out of it and is written later under its new key; the next chunk starts after 3100,
    not after 90001 (which a LIMIT under FOR SHARE would have made the chunk's end)."""
    fill_items(snap, 5000)
    with psycopg.connect(snap.dsn) as writer:
        writer.execute("UPDATE public.items SET id = 90001 WHERE id = 3100")
        process = spawn(snap, "--table", "items", "--chunk", "100", "--yes")
        try:
            wait_until(lambda: snapshot_backend(snap), timeout=30)
            writer.commit()
            out, err = process.communicate(timeout=30)
        finally:
            process.kill()
    assert process.returncode == 0, err
    ids = Counter(int(m["columns"][0][3]) for m in snap.messages())
    assert set(ids) == {*range(1, 3100), *range(3101, 5001), 90001}
    assert set(ids.values()) == {1}
    assert "wrote 5,000 rows" in out


def test_role_sql_with_snapshot_tables_gives_the_role_what_a_snapshot_needs(
    snap: SnapshotSetup, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from cdc_bridge.dev.pginstall import find_pg_bindir

    fill_items(snap, 50)
    text = (REPO_ROOT / "sql" / "role.sql").read_text()
    text = text.replace(
        "snapshot_tables CONSTANT text[] := ARRAY[]::text[];",
        "snapshot_tables CONSTANT text[] := ARRAY['public.items'];",
    )
    assert "ARRAY['public.items']" in text
    role_sql = tmp_path / "role.sql"
    role_sql.write_text(text)
    result = subprocess.run(
        [str(find_pg_bindir() / "psql"), "-X", "-q", "-d", snap.dsn, "-f", str(role_sql)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and "ERROR" not in result.stderr, result.stderr
    role_dsn = snap.dsn.replace("postgres@", "cdc_bridge@", 1)
    run = cli(capsys, "--config", snap.config, "--dsn", role_dsn, "--table", "items", "--yes")
    assert run.code == 0, run.err
    assert len(snap.messages()) == 50
    # what it was not given: another change table
    other = cli(capsys, "--config", snap.config, "--dsn", role_dsn, "--table", "lines", "--yes")
    assert other.code == 1
    assert other.err.startswith("cdc-bridge: role cdc_bridge lacks SELECT on public.lines;")
