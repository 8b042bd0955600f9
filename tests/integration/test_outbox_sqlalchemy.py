"""The SQLAlchemy 2 recipe of docs/application.md, exactly as written there.

A Session on the ``postgresql+psycopg`` dialect holds a psycopg connection; emit() on that
connection joins the Session's transaction, so the Session's commit or rollback decides
for the business rows and the event together.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from sqlalchemy import Engine, String, create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from cdc_bridge.outbox import emit, emit_async


class Base(DeclarativeBase):
    pass


class Ticket(Base):
    __tablename__ = "tickets"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    title: Mapped[str]


def sqlalchemy_url(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture
def engine(pg_dsn: str) -> Iterator[Engine]:
    engine = create_engine(sqlalchemy_url(pg_dsn))
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
async def async_engine(pg_dsn: str, engine: Engine) -> AsyncIterator[AsyncEngine]:
    async_engine = create_async_engine(sqlalchemy_url(pg_dsn))
    yield async_engine
    await async_engine.dispose()


def stored(dsn: str) -> tuple[list[str], list[str]]:
    """(ticket ids, outbox aggregate ids) as committed."""
    with psycopg.connect(dsn) as conn:
        tickets = [row[0] for row in conn.execute("SELECT id FROM tickets ORDER BY id")]
        events = [
            row[0] for row in conn.execute("SELECT aggregate_id FROM outbox ORDER BY created_at")
        ]
    return tickets, events


def create_ticket(session: Session, ticket_id: str, title: str) -> None:
    """The recipe: the ORM write and the event, both in the Session's transaction."""
    session.add(Ticket(id=ticket_id, title=title))
    emit(
        session.connection().connection.driver_connection,
        aggregate_type="ticket",
        aggregate_id=ticket_id,
        event_type="ticket:created",
        payload={"id": ticket_id, "title": title},
    )


def test_emit_joins_the_session_transaction(engine: Engine, pg_dsn: str) -> None:
    with Session(engine) as session:
        create_ticket(session, "T-1", "rolled back")
        session.rollback()
        create_ticket(session, "T-2", "committed")
        session.commit()
    with Session(engine) as session, session.begin():  # the begin() block commits
        create_ticket(session, "T-3", "committed by the block")
    with pytest.raises(RuntimeError), Session(engine) as session, session.begin():
        create_ticket(session, "T-4", "rolled back by the error")
        raise RuntimeError
    assert stored(pg_dsn) == (["T-2", "T-3"], ["T-2", "T-3"])


def test_core_statements_share_the_transaction_too(engine: Engine, pg_dsn: str) -> None:
    with Session(engine) as session:
        session.execute(text("INSERT INTO tickets (id, title) VALUES ('T-5', 'core')"))
        emit(
            session.connection().connection.driver_connection,
            aggregate_type="ticket",
            aggregate_id="T-5",
            event_type="ticket:created",
            payload={},
        )
        # Another session sees neither before the commit
        assert stored(pg_dsn) == ([], [])
        session.commit()
    assert stored(pg_dsn) == (["T-5"], ["T-5"])


async def test_emit_async_joins_the_async_session_transaction(
    async_engine: AsyncEngine, pg_dsn: str
) -> None:
    async def create(session: AsyncSession, ticket_id: str) -> None:
        session.add(Ticket(id=ticket_id, title="async"))
        connection = await session.connection()
        raw = await connection.get_raw_connection()
        await emit_async(
            raw.driver_connection,
            aggregate_type="ticket",
            aggregate_id=ticket_id,
            event_type="ticket:created",
            payload={"id": ticket_id},
        )

    async with AsyncSession(async_engine) as session:
        await create(session, "T-6")
        await session.rollback()
        await create(session, "T-7")
        await session.commit()
    assert stored(pg_dsn) == (["T-7"], ["T-7"])
