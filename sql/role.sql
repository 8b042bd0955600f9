-- A least-privilege PostgreSQL role for cdc-bridge. Run it as an administrator, in the
-- database that holds the outbox (psql -d app -f sql/role.sql); rename the role or the
-- tables to yours. Then give the role a password without it reaching the server's log:
--   psql -d app -c '\password cdc_bridge'      (psql sends only a SCRAM hash)
--
-- What the bridge does, and what that takes:
--   stream from its slot (START_REPLICATION)       REPLICATION
--   create its slot when missing                   REPLICATION
--   check the outbox tables and their columns      nothing (catalogs are readable by all)
--   look at outbox rows (cdc-bridge check, debug)  SELECT on the outbox tables
--   leadership lock, slot lag, WAL position        nothing (advisory locks, catalog views)
--   create the publication when missing            ownership of the outbox tables and
--                                                  CREATE on the database: NOT granted here
--
-- So the publication is made once by an administrator, before the bridge's first start:
--   cdc-bridge init --config bridge.yaml --dsn 'postgresql://admin@db/app?sslmode=verify-full'
-- (it creates the publication, the slot and the NATS stream: whatever is missing). After
-- that the bridge needs nothing beyond this role. The publication must cover exactly the
-- outbox tables: the bridge refuses one that leaves any of them out.
--
-- pg_hba.conf: a logical replication connection names its database, so the role needs a
-- line for that database (the `replication` keyword only covers physical replication):
--   hostssl  app  cdc_bridge  10.0.0.0/8  scram-sha-256
-- and the bridge connects with sslmode=verify-full (see docs/security.md).

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cdc_bridge') THEN
        CREATE ROLE cdc_bridge LOGIN REPLICATION
            NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOBYPASSRLS;
    END IF;
    -- CONNECT is PUBLIC's by default, but hardened servers often revoke that.
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO cdc_bridge', current_database());
END
$$;

-- Nothing else: no other table, no CREATE anywhere.
GRANT USAGE ON SCHEMA public TO cdc_bridge;
GRANT SELECT ON public.outbox TO cdc_bridge;
