-- PostgreSQL 15 + PostGIS schema for the peer comparison (benches/peers).
-- Loaded by peers.py: tables are created and filled with COPY ... FREEZE in
-- one transaction each, then the indexes below are built, then VACUUM
-- ANALYZE. Durability is left at the defaults (fsync on, synchronous_commit
-- on, full_page_writes on, wal_level replica).
--
-- Person ids are pseudonymous u64 values; bigint is signed, so ids >= 2^63
-- are stored as id - 2^64 (a bijection; the harness converts back).

CREATE EXTENSION IF NOT EXISTS postgis;

CREATE TABLE addresses (
    code  text PRIMARY KEY,            -- occupancy looks addresses up by code
    lat   double precision NOT NULL,
    lng   double precision NOT NULL,
    kind  text NOT NULL,
    area  text NOT NULL,
    label text NOT NULL
);

CREATE TABLE registry (
    person      bigint NOT NULL,
    address     text NOT NULL,
    kind        text NOT NULL,
    valid_from  timestamptz NOT NULL,
    valid_until timestamptz            -- NULL: permanent
);

-- One row per event. The point is resolved at load time (the event's own
-- lat/lng, else its address's point), `hour` is floor(unix/3600) and `cell`
-- is the S2 level-16 cell id of the point (signed), both precomputed by the
-- harness, because PostGIS has no S2 and hourcell's semantics are per slice
-- cell and whole UTC hour.
CREATE TABLE events (
    person  bigint NOT NULL,
    ts      timestamptz NOT NULL,
    hour    integer NOT NULL,
    geom    geometry(Point, 4326) NOT NULL,
    address text,                      -- NULL when the event has no code
    source  text NOT NULL,
    cell    bigint NOT NULL
);

-- @@INDEXES@@ (the harness splits here: everything below is timed as index build)

-- who-was-at (circle/rect): the region becomes a list of level-16 cells, so
-- the access path is `cell = ANY(list) AND hour in window`: equality on the
-- leading column, a range on the second. INCLUDE (person) makes it an
-- index-only scan (the table is frozen and all-visible after the load).
CREATE INDEX events_cell_hour ON events (cell, hour) INCLUDE (person);

-- occupancy by address code: same shape as the cell index.
CREATE INDEX events_address_hour ON events (address, hour) INCLUDE (person);

-- where-was (one person, a window) and no-activity-since (per registered
-- person: any event since?  last event before?): both are probes on
-- (person, ts); max(ts) before a bound is a backward index-only scan.
CREATE INDEX events_person_ts ON events (person, ts);

-- Events arrive in time order, so the heap is physically ordered by time:
-- a BRIN index on ts is tiny and lets time-only scans skip blocks.
CREATE INDEX events_ts_brin ON events USING brin (ts);

-- What a PostGIS user keeps for ad-hoc spatial work (ST_DWithin etc.). The
-- benchmark's queries do not use it (their semantics are per S2 cell, which
-- a point-in-circle test does not reproduce), but it is part of the load
-- and the footprint, as it would be in a real deployment.
CREATE INDEX events_geom ON events USING gist (geom);

-- no-activity-since filters registrations valid at as_of.
CREATE INDEX registry_person ON registry (person);
