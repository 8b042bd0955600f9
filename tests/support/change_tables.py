"""A change table ``public.tickets`` and bridge configs that publish its changes."""

from __future__ import annotations

from typing import Any

from support.outbox import bridge_config

TICKETS = """
CREATE TABLE public.tickets (
    id int PRIMARY KEY, title varchar(200) NOT NULL, status text, priority smallint,
    estimate numeric(6,2), done boolean, attachment bytea, body text
);
ALTER TABLE public.tickets ALTER COLUMN body SET STORAGE EXTERNAL;
"""
# 8 KB kept out of line (STORAGE EXTERNAL): an update that leaves it alone does not send it.
BIG = "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 250) g)"


def change_config(dsn: str, nats_url: str, name: str, plugin: str) -> dict[str, Any]:
    return bridge_config(
        dsn,
        nats_url,
        name,
        postgres={"slot": f"{name}_{plugin}", "publication": f"{name}_{plugin}", "plugin": plugin},
        outbox={"table": "public.outbox", "change_tables": ["public.tickets"]},
        routes=[
            {
                "name": "ticket_deleted",
                "when": {"table": "public.tickets", "action": "D"},
                "subject": f"{name}.tickets.deleted",
                "payload": "change",
                "headers": {"Ticket": "{id}"},
            },
            {
                "name": "tickets",
                "when": {"table": "public.tickets"},
                "subject": f"{name}.tickets.{{action}}",
                "payload": "change",
            },
            {"subject": f"{name}.{{aggregate_type}}.{{event_type}}"},
        ],
        dead_letter={"subject": f"{name}.dlq"},
    )


def debezium_config(dsn: str, nats_url: str, name: str, plugin: str) -> dict[str, Any]:
    config = change_config(dsn, nats_url, name, plugin)
    config["routes"] = [
        {"when": {"table": "public.tickets"}, "subject": f"{name}.tickets.{{action}}",
         "payload": "debezium"},
        {"subject": f"{name}.{{aggregate_type}}.{{event_type}}"},
    ]  # fmt: skip
    return config
