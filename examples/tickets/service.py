"""A small ticket service: each change to a ticket and its event commit together.

HTTP (stdlib http.server, JSON bodies):

    POST  /tickets          {"title": "..."}                      -> 201 the ticket
    PATCH /tickets/<id>     {"title": "...", "status": "closed"}  -> 200 the ticket
    GET   /tickets          -> 200 every ticket
    GET   /tickets/<id>     -> 200 the ticket

Each write is one transaction holding the ticket row and its event, written with
cdc_bridge.outbox.emit: ``ticket:created`` or ``ticket:updated``, whose payload is the
whole ticket (id, title, status, version). The service never talks to NATS, so it keeps
working while NATS is down; cdc-bridge publishes the events when it can.

    python service.py --dsn postgresql://... --init --listen 127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row

from cdc_bridge.outbox import emit

SCHEMA_SQL = Path(__file__).with_name("schema.sql")
STATUSES = ("open", "in_progress", "closed")
EDITABLE = frozenset({"title", "status"})
_COLUMNS = "id, title, status, version"  # what a ticket is, in answers and events
_TICKET_PATH = re.compile(r"/tickets/([A-Za-z0-9_-]{1,64})")

Conn = psycopg.Connection[DictRow]


class BadRequest(Exception):
    """The request body is not a valid ticket or change: answered with 400."""


# --- the business logic: a write and its event, in one transaction ----------------------------


def create_ticket(conn: Conn, title: object) -> dict[str, Any]:
    title = _checked_title(title)
    with conn.transaction():
        ticket = _one(
            conn.execute(
                f"INSERT INTO tickets (id, title) VALUES (%s, %s) RETURNING {_COLUMNS}",
                (f"T-{uuid.uuid4().hex[:10]}", title),
            ).fetchone()
        )
        emit(
            conn,
            aggregate_type="ticket",
            aggregate_id=ticket["id"],
            event_type="ticket:created",
            payload=ticket,
        )
    return ticket


def update_ticket(conn: Conn, ticket_id: str, changes: Mapping[str, Any]) -> dict[str, Any] | None:
    """Apply ``changes`` (title, status); the new ticket, or None when there is none."""
    unknown = sorted(set(changes) - EDITABLE)
    if unknown or not changes:
        raise BadRequest(f"give title and/or status, not {unknown or 'nothing'}")
    if "title" in changes:
        _checked_title(changes["title"])
    if "status" in changes and changes["status"] not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}")
    with conn.transaction():
        # The row lock taken here orders concurrent updates of one ticket: their commits,
        # and so their events, come in version order.
        row = conn.execute(
            "UPDATE tickets SET title = coalesce(%(title)s, title),"
            " status = coalesce(%(status)s, status), version = version + 1,"
            f" updated_at = now() WHERE id = %(id)s RETURNING {_COLUMNS}",
            {"id": ticket_id, "title": changes.get("title"), "status": changes.get("status")},
        ).fetchone()
        if row is None:
            return None
        ticket = dict(row)
        emit(
            conn,
            aggregate_type="ticket",
            aggregate_id=ticket_id,
            event_type="ticket:updated",
            payload={**ticket, "changed": sorted(changes)},
        )
    return ticket


def list_tickets(conn: Conn) -> list[dict[str, Any]]:
    return [dict(row) for row in conn.execute(f"SELECT {_COLUMNS} FROM tickets ORDER BY id")]


def get_ticket(conn: Conn, ticket_id: str) -> dict[str, Any] | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM tickets WHERE id = %s", (ticket_id,))
    found = row.fetchone()
    return None if found is None else dict(found)


def create_schema(dsn: str) -> None:
    """The tickets table and the outbox table, if missing."""
    outbox_sql = resources.files("cdc_bridge").joinpath("sql/outbox.sql").read_text()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL.read_text().encode())
        conn.execute(outbox_sql.encode())


def _checked_title(title: object) -> str:
    if not isinstance(title, str) or not title.strip():
        raise BadRequest("title must be a non-empty string")
    return title


def _one(row: DictRow | None) -> dict[str, Any]:
    assert row is not None  # INSERT ... RETURNING returns the row
    return dict(row)


# --- HTTP -------------------------------------------------------------------------------------


class TicketHandler(BaseHTTPRequestHandler):
    server: TicketServer

    def do_GET(self) -> None:
        with self._connect() as conn:
            if self.path == "/tickets":
                self._answer(HTTPStatus.OK, list_tickets(conn))
            elif (match := _TICKET_PATH.fullmatch(self.path)) is not None:
                self._answer_ticket(get_ticket(conn, match[1]), HTTPStatus.OK)
            else:
                self._answer(HTTPStatus.NOT_FOUND, {"error": "no such resource"})

    def do_POST(self) -> None:
        if self.path != "/tickets":
            self._answer(HTTPStatus.NOT_FOUND, {"error": "POST /tickets"})
            return
        body = self._body()
        if body is not None:
            with self._connect() as conn:
                self._write(lambda: create_ticket(conn, body.get("title")), HTTPStatus.CREATED)

    def do_PATCH(self) -> None:
        match = _TICKET_PATH.fullmatch(self.path)
        if match is None:
            self._answer(HTTPStatus.NOT_FOUND, {"error": "PATCH /tickets/<id>"})
            return
        body = self._body()
        if body is not None:
            with self._connect() as conn:
                self._write(lambda: update_ticket(conn, match[1], body), HTTPStatus.OK)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would drown the demo's own output

    def _connect(self) -> Conn:
        # A connection per request keeps the example short; a real service would pool.
        return psycopg.connect(self.server.dsn, autocommit=True, row_factory=dict_row)

    def _write(self, action: Callable[[], dict[str, Any] | None], status: HTTPStatus) -> None:
        try:
            self._answer_ticket(action(), status)
        except BadRequest as exc:
            self._answer(HTTPStatus.BAD_REQUEST, {"error": str(exc)})

    def _body(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._answer(HTTPStatus.BAD_REQUEST, {"error": "the body must be a JSON object"})
            return None
        return body

    def _answer_ticket(self, ticket: dict[str, Any] | None, status: HTTPStatus) -> None:
        if ticket is None:
            self._answer(HTTPStatus.NOT_FOUND, {"error": "no such ticket"})
        else:
            self._answer(status, ticket)

    def _answer(self, status: HTTPStatus, document: object) -> None:
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class TicketServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], dsn: str) -> None:
        super().__init__(address, TicketHandler)
        self.dsn = dsn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The ticket service of examples/tickets.")
    parser.add_argument("--dsn", default=os.environ.get("TICKETS_DSN"), help="or $TICKETS_DSN")
    parser.add_argument("--listen", default="127.0.0.1:8000", help="host:port (port 0: any)")
    parser.add_argument("--init", action="store_true", help="create the tables first")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("give --dsn or set TICKETS_DSN")
    if args.init:
        create_schema(args.dsn)
    host, _, port = args.listen.rpartition(":")
    server = TicketServer((host, int(port)), args.dsn)
    bound_host, bound_port = server.server_address[:2]
    print(f"tickets service listening on http://{bound_host!s}:{bound_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
