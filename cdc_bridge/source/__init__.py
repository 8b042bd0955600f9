"""PostgreSQL: the replication connection, the streaming protocol, the decoders,
plugin options, catalog queries, setup of publication and slot, leadership."""
