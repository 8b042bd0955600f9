"""Per output plugin: the decoder, its START_REPLICATION options, its session settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cdc_bridge.routing.messages import EnvelopeColumns
from cdc_bridge.source.decoding.pgoutput import PgoutputDecoder
from cdc_bridge.source.replication import connection_string

# wal2json's decoder is imported only when it is the configured plugin (pgoutput's module
# is loaded anyway: the pipeline's snapshot rows use its bytea parser).
if TYPE_CHECKING:
    from cdc_bridge.config.model import BridgeConfig
    from cdc_bridge.routing.change_events import TypeNames
    from cdc_bridge.source.decoding import Decoder


def decoder_for(
    config: BridgeConfig, type_names: TypeNames | None = None
) -> tuple[Decoder, list[tuple[str, str]]]:
    """The plugin's decoder and its START_REPLICATION options. ``type_names`` names the
    change tables' column types for pgoutput (see prepare_postgres)."""
    outbox = config.outbox
    change_tables = frozenset(outbox.change_tables)
    if config.postgres.plugin == "wal2json":
        from cdc_bridge.source.decoding import wal2json

        options = wal2json.wal2json_options(
            outbox.tables, outbox.message_prefixes, outbox.change_tables
        )
        return wal2json.Wal2jsonDecoder(change_tables), options
    options = [
        ("proto_version", "1"),
        ("publication_names", config.postgres.publication),
    ]
    # Messages of every prefix, even with no outbox.message_prefixes: the pipeline picks
    # its own, and warns of a transactional message it does not publish.
    options.append(("messages", "true"))
    if type_names is None:
        return PgoutputDecoder(change_tables), options
    return PgoutputDecoder(change_tables, type_names), options


def replication_dsn(config: BridgeConfig) -> str:
    """The DSN of the replication connection, with the session settings the plugin's
    output depends on (wal2json mangles bytea unless bytea_output is hex)."""
    pg = config.postgres
    if pg.plugin != "wal2json":
        return pg.dsn
    from cdc_bridge.source.decoding import wal2json

    return connection_string(pg.dsn, pg.connect_timeout, options=wal2json.SESSION_OPTIONS)


def envelope_columns(config: BridgeConfig) -> EnvelopeColumns:
    outbox = config.outbox
    return EnvelopeColumns(outbox.id_column, outbox.payload_column, outbox.headers_column)
