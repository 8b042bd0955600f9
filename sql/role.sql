-- Run AFTER `cdc-bridge init --config FILE --dsn <admin DSN>`: this grants SELECT on the outbox tables, which init creates.
--
-- A least-privilege PostgreSQL role for cdc-bridge. Run it as an administrator, in the
-- database that holds the outbox (psql -d app -f sql/role.sql); rename the role or the
-- tables to yours (both are named once, below). Then give the role a password without
-- it reaching the server's log:
--   psql -d app -c '\password cdc_bridge'      (psql sends only a SCRAM hash)
--
-- The order, on a fresh database:
--   1. an administrator: cdc-bridge init --config bridge.yaml --dsn 'postgresql://admin@db/app?sslmode=verify-full'
--      (creates the outbox tables, the publication, the slot and the NATS stream: whatever is missing)
--   2. an administrator: psql -d app -f sql/role.sql
--   3. the bridge runs as cdc_bridge; it needs nothing beyond this role from then on.
-- The whole file is one statement: it changes nothing unless all of it works.
--
-- What the bridge does, and what that takes:
--   stream from its slot (START_REPLICATION)       REPLICATION
--   create its slot when missing                   REPLICATION
--   check the outbox tables and their columns      nothing (catalogs are readable by all)
--   look at outbox rows (cdc-bridge check, debug)  SELECT on the outbox tables
--   leadership lock, slot lag, WAL position        nothing (advisory locks, catalog views)
--   with postgres.source: standby, on the primary  EXECUTE on pg_log_standby_snapshot()
--   (apply this file there): have an idle          (PostgreSQL 16+; granted where the
--   primary log what the standby's slot waits for   server has the function)
--   create the publication when missing            ownership of the outbox tables and
--                                                  CREATE on the database: NOT granted here
--   delete old rows (cdc-bridge outbox prune)      DELETE: NOT granted here; run prune
--                                                  with --dsn as a role that may delete
--   cdc-bridge snapshot of a change table          only for the tables in snapshot_tables
--   (docs/operating.md, "Snapshots and backfills"): below (empty: none), see "Snapshots"
-- The publication must cover exactly the outbox tables: the bridge refuses one that
-- leaves any of them out.
--
-- NOT granted either: pg_read_all_stats. Without it `cdc-bridge slots show` shows the
-- walsender's pid and client but not its state, sent/write/flush/replay positions or
-- reply time (PostgreSQL hides them even for the role's own walsender); the slot's lag
-- (confirmed_flush_lsn against the WAL head) stays visible. pg_read_all_stats would
-- also let a stolen credential read every session's query text, in every database, so
-- read those fields with a monitoring role (pg_monitor) via --dsn, or grant it knowingly:
--   PostgreSQL 16+:  GRANT pg_read_all_stats TO cdc_bridge WITH INHERIT TRUE;
--   15 and older:    GRANT pg_read_all_stats TO cdc_bridge; ALTER ROLE cdc_bridge INHERIT;
-- (the role is NOINHERIT, so a plain GRANT alone has no effect).
--
-- Snapshots (`cdc-bridge snapshot --table T`): the command reads T with SELECT ... FOR
-- SHARE, which PostgreSQL allows only with UPDATE privilege on T (on at least one column;
-- there is no privilege for locking alone), writes logical decoding messages with
-- pg_logical_emit_message (EXECUTE is PUBLIC's by default; re-granted here in case it was
-- revoked) and keeps its progress in outbox.snapshot_table. For each table listed in
-- snapshot_tables this file grants SELECT and UPDATE of the first primary key column (so
-- the role could change that column: where that is too much, leave snapshot_tables empty
-- and run the snapshot with --dsn as the table's owner), and creates the progress table
-- (name it as the config's outbox.snapshot_table) with SELECT, INSERT, UPDATE on it.
--
-- pg_hba.conf: a logical replication connection names its database, so the role needs a
-- line for that database (the `replication` keyword only covers physical replication):
--   hostssl  app  cdc_bridge  10.0.0.0/8  scram-sha-256
-- and the bridge connects with sslmode=verify-full (see docs/security.md).

DO $$
DECLARE
    bridge_role CONSTANT text := 'cdc_bridge';
    outbox_tables CONSTANT text[] := ARRAY['public.outbox'];
    -- change tables `cdc-bridge snapshot` may read as this role, e.g. ARRAY['public.orders']
    snapshot_tables CONSTANT text[] := ARRAY[]::text[];
    snapshot_progress CONSTANT text := 'public.cdc_bridge_snapshots';  -- outbox.snapshot_table
    snapshot_table text;
    key_column name;
    emit regprocedure;
    missing text[];
    outbox_table text;
BEGIN
    SELECT array_agg(t) INTO missing FROM unnest(outbox_tables || snapshot_tables) AS t
        WHERE to_regclass(t) IS NULL;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'sql/role.sql: % does not exist yet in database %', array_to_string(missing, ', '), current_database()
            USING HINT = 'run `cdc-bridge init --config FILE --dsn <admin DSN>` first (it creates the outbox tables, the publication and the slot), then this file';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = bridge_role) THEN
        EXECUTE format('CREATE ROLE %I LOGIN REPLICATION '
            'NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOBYPASSRLS', bridge_role);
    END IF;
    -- CONNECT is PUBLIC's by default, but hardened servers often revoke that.
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), bridge_role);
    -- Nothing else: no other table, no CREATE anywhere.
    FOREACH outbox_table IN ARRAY outbox_tables LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I',
            (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = to_regclass(outbox_table)), bridge_role);
        EXECUTE format('GRANT SELECT ON %s TO %I', to_regclass(outbox_table), bridge_role);
    END LOOP;
    -- A standby source's slot waits for a running-transactions record an idle primary
    -- never writes: the bridge asks for one. The function exists from PostgreSQL 16 on.
    IF to_regprocedure('pg_catalog.pg_log_standby_snapshot()') IS NOT NULL THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION pg_catalog.pg_log_standby_snapshot() TO %I',
            bridge_role);
    END IF;
    -- Snapshots (see above). The progress table is the one cdc-bridge creates itself
    -- (cdc_bridge/source/snapshot.py, progress_table_ddl): keep the two alike
    -- (tests/unit/source/test_snapshot_progress_table.py compares them).
    IF cardinality(snapshot_tables) > 0 THEN
        EXECUTE format('CREATE TABLE IF NOT EXISTS %s (
            snapshot_id text NOT NULL,
            table_name text NOT NULL,
            where_clause text,
            chunk_size integer NOT NULL,
            last_key text[],
            rows bigint NOT NULL DEFAULT 0,
            chunks bigint NOT NULL DEFAULT 0,
            started_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz,
            PRIMARY KEY (snapshot_id, table_name)
        )', snapshot_progress);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE ON %s TO %I',
            to_regclass(snapshot_progress), bridge_role);
        -- (boolean, text, text) before PostgreSQL 17, (boolean, text, text, boolean) since
        FOR emit IN SELECT p.oid::regprocedure FROM pg_proc p
                WHERE p.proname = 'pg_logical_emit_message'
                  AND p.pronamespace = 'pg_catalog'::regnamespace
                  AND p.proargtypes[2] = 'text'::regtype LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', emit, bridge_role);
        END LOOP;
    END IF;
    FOREACH snapshot_table IN ARRAY snapshot_tables LOOP
        SELECT a.attname INTO key_column FROM pg_index i
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE i.indrelid = to_regclass(snapshot_table) AND i.indisprimary;
        IF key_column IS NULL THEN
            RAISE EXCEPTION 'sql/role.sql: % has no primary key: cdc-bridge snapshot refuses it', snapshot_table
                USING HINT = 'add one (ALTER TABLE ... ADD PRIMARY KEY), or take it out of snapshot_tables';
        END IF;
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I',
            (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = to_regclass(snapshot_table)), bridge_role);
        EXECUTE format('GRANT SELECT, UPDATE (%I) ON %s TO %I',
            key_column, to_regclass(snapshot_table), bridge_role);
    END LOOP;
END
$$;
