"""PostgreSQL 15 + PostGIS: COPY ... FREEZE of the prepared rows, the
indexes of schema.sql, VACUUM ANALYZE (all timed), then every query set
through psycopg, one connection per client."""
import os
import time

from common import (PssSampler, assemble_grid, assemble_occ, du, dump, load, loadavg, nas_bounds, norm_where,
                    run_queries, signed, token, unsigned)

PG_WHO = "SELECT DISTINCT person FROM events WHERE cell = ANY(%s) AND hour >= %s AND hour < %s"
PG_WHERE = """
SELECT hour, array_agg(DISTINCT cell), coalesce(array_agg(DISTINCT address) FILTER (WHERE address IS NOT NULL), '{}'),
       array_agg(DISTINCT source)
FROM events WHERE person = %s AND ts >= to_timestamp(%s) AND ts < to_timestamp(%s)
GROUP BY hour ORDER BY hour"""
PG_OCC = """
SELECT hour, count(DISTINCT person) FROM events
WHERE address = %s AND hour >= %s AND hour < %s
GROUP BY GROUPING SETS ((hour), ())"""
# registrations valid at as_of; no event in [hour(since), hour(as_of)]; last
# seen = the hour of the last event before hour(since). Both probes are
# backward/forward index-only scans on (person, ts).
PG_NAS = """
WITH reg AS (
  SELECT DISTINCT person FROM registry
  WHERE valid_from <= to_timestamp(%(as_of)s) AND (valid_until IS NULL OR valid_until > to_timestamp(%(as_of)s))
), inactive AS (
  SELECT person FROM reg r WHERE NOT EXISTS (
    SELECT 1 FROM events e WHERE e.person = r.person
      AND e.ts >= to_timestamp(%(hs)s) AND e.ts < to_timestamp(%(he)s))
)
SELECT i.person, (SELECT floor(extract(epoch FROM max(e.ts)) / 3600)::bigint FROM events e
                  WHERE e.person = i.person AND e.ts < to_timestamp(%(hs)s))
FROM inactive i"""


PG_OCC_CELLS = """
SELECT hour, count(DISTINCT person) FROM events
WHERE cell = ANY(%s) AND hour >= %s AND hour < %s
GROUP BY GROUPING SETS ((hour), ())"""
PG_GRID = """
SELECT cell, hour, count(DISTINCT person) FROM events
WHERE cell = ANY(%s) AND hour >= %s AND hour < %s
GROUP BY cell, hour"""


def pg_queries(conn, as_of):
    """Every parameter set's query on a psycopg connection, by set name."""
    def who(x):
        return sorted(unsigned(r[0]) for r in conn.execute(PG_WHO, (x["cells"], x["from"] // 3600, x["to"] // 3600)))

    def where(x):
        rows = conn.execute(PG_WHERE, (signed(x["person"]), x["from"], x["to"])).fetchall()
        return norm_where([(h * 3600, [token(c) for c in cs], ad, so) for h, cs, ad, so in rows])

    def occ(x):
        rows = conn.execute(PG_OCC, (x["address"], x["from"] // 3600, x["to"] // 3600)).fetchall()
        return assemble_occ(rows, x["from"], x["to"])

    def occ_cells(x):
        rows = conn.execute(PG_OCC_CELLS, (x["cells"], x["from"] // 3600, x["to"] // 3600)).fetchall()
        return assemble_occ(rows, x["from"], x["to"])

    def nas(x):
        hs, he = nas_bounds(x, as_of)
        rows = conn.execute(PG_NAS, {"as_of": as_of, "hs": hs, "he": he}).fetchall()
        return sorted([unsigned(p), None if h is None else h * 3600] for p, h in rows)

    def grid(x):
        return assemble_grid(conn.execute(PG_GRID, (x["cells"], x["from"] // 3600, x["to"] // 3600)).fetchall())

    return {"circle": who, "rect": who, "where": where, "occ": occ, "nas": nas,
            "occ_circle": occ_cells, "occ_area": occ_cells, "who3k": who, "grid": grid}


def cmd_postgres(a):
    import psycopg
    P = load(a.params)
    prep = load(os.path.join(a.prep, "prep.json"))
    as_of = P["as_of"]
    res = {"system": "postgres", "loadavg": loadavg()}
    conn = psycopg.connect(host="127.0.0.1", port=a.port, user="postgres", dbname="postgres", autocommit=True)
    conn.execute("SET client_min_messages = warning")
    res["version"] = conn.execute("SELECT version()").fetchone()[0]
    sampler = PssSampler(a.postmaster_pid)
    sampler.start()
    sql = open(a.schema).read()
    ddl, idx = sql.split("-- @@INDEXES@@", 1)
    idx = idx.split("\n", 1)[1]
    conn.execute(ddl)
    res["postgis"] = conn.execute("SELECT postgis_lib_version()").fetchone()[0]
    steps = {}

    def step(name, fn):
        t0 = time.time()
        fn()
        steps[name] = time.time() - t0
        print("  postgres %-22s %7.1f s" % (name, steps[name]), flush=True)

    def copy_small():
        with conn.transaction():
            conn.execute("COPY addresses FROM %s WITH (FORMAT csv, HEADER true)" % lit(os.path.join(a.town, "addresses.csv")))
            # person ids are u64: through numeric into the signed bigint
            conn.execute("CREATE TEMP TABLE registry_in (person numeric, address text, kind text, valid_from timestamptz, valid_until timestamptz)")
            conn.execute("COPY registry_in FROM %s WITH (FORMAT csv, HEADER true)" % lit(os.path.join(a.town, "registry.csv")))
            conn.execute("""INSERT INTO registry SELECT (CASE WHEN person >= 9223372036854775808 THEN person - 18446744073709551616
                            ELSE person END)::bigint, address, kind, valid_from, valid_until FROM registry_in""")
            conn.execute("DROP TABLE registry_in")

    def copy_events():
        # one transaction that truncates and fills the table: COPY FREEZE
        # writes the rows frozen and all-visible (index-only scans at once)
        with conn.transaction():
            conn.execute("TRUNCATE events")
            for part in prep["parts"]:
                conn.execute("COPY events (person, ts, hour, geom, address, source, cell) FROM %s WITH (FORMAT csv, FREEZE true)" % lit(part))

    def indexes():
        code = "\n".join(l for l in idx.splitlines() if not l.strip().startswith("--"))
        for stmt in [s.strip() for s in code.split(";") if s.strip()]:
            conn.execute(stmt)

    def vacuum():
        conn.execute("VACUUM (ANALYZE) events")
        conn.execute("VACUUM (ANALYZE) registry")
        conn.execute("VACUUM (ANALYZE) addresses")

    def checkpoint():
        conn.execute("CHECKPOINT")

    step("copy addresses+registry", copy_small)
    step("copy events", copy_events)
    step("create indexes", indexes)
    step("vacuum analyze", vacuum)
    step("checkpoint", checkpoint)
    res["load"] = {"steps": steps, "events_s": steps["copy events"] + steps["create indexes"] + steps["vacuum analyze"]}
    sizes = conn.execute("""SELECT c.relname, pg_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                            WHERE n.nspname = 'public' AND c.relkind IN ('r','i','t') ORDER BY 2 DESC""").fetchall()
    res["relations"] = {k: v for k, v in sizes}
    res["disk"] = conn.execute("SELECT pg_total_relation_size('events') + pg_total_relation_size('registry') + pg_total_relation_size('addresses')").fetchone()[0]
    res["disk_gist"] = conn.execute("SELECT pg_relation_size('events_geom')").fetchone()[0]
    res["disk_datadir_minus_wal"] = du(a.pgdata) - du(os.path.join(a.pgdata, "pg_wal"))
    print("  postgres tables+indexes %d bytes (GiST %d)" % (res["disk"], res["disk_gist"]), flush=True)
    res["loadavg_queries"] = loadavg()

    def connect():
        c = psycopg.connect(host="127.0.0.1", port=a.port, user="postgres", dbname="postgres", autocommit=True)
        c.execute("SET client_min_messages = warning")
        return c

    def make_fns():
        c = connect()
        fns = pg_queries(c, as_of)
        fns["_close"] = c.close
        return fns

    run_queries(res, P, pg_queries(conn, as_of), make_fns, a.clients)
    x3 = P["who3k"][0] if P.get("who3k") else None
    res["plans"] = {
        "who": explain(conn, PG_WHO, (P["circle"][0]["cells"], P["circle"][0]["from"] // 3600, P["circle"][0]["to"] // 3600)),
        "who3k": explain(conn, PG_WHO, (x3["cells"], x3["from"] // 3600, x3["to"] // 3600)) if x3 else "",
        "nas": explain(conn, PG_NAS, {"as_of": as_of, "hs": nas_bounds(P["nas"][0], as_of)[0], "he": nas_bounds(P["nas"][0], as_of)[1]}) if P["nas"] else "",
    }
    sampler.stop()
    res["mem_peak"] = sampler.peak
    res["mem_max_single_hwm"] = sampler.hwm_max
    dump(a.out, res)
    print("postgres: peak sum PSS %d, largest single VmHWM %d" % (sampler.peak, sampler.hwm_max))


def lit(s):
    return "'" + s.replace("'", "''") + "'"


def explain(conn, sql, params):
    return "\n".join(r[0] for r in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params))
