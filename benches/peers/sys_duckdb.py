"""DuckDB in process: CREATE TABLE AS ... ORDER BY hour, cell from the
prepared rows and CHECKPOINT (timed), then every query set, one cursor (its
own connection to the same database) per client thread."""
import os
import time

from common import (assemble_grid, assemble_occ, dump, load, loadavg, nas_bounds, norm_where, proc_status,
                    run_queries, token)

WHO = "SELECT DISTINCT person FROM events WHERE hour >= ? AND hour < ? AND cell IN (SELECT UNNEST(?::BIGINT[]))"
WHERE = """SELECT hour, list(DISTINCT cell), list(DISTINCT address) FILTER (WHERE address IS NOT NULL), list(DISTINCT source)
           FROM events WHERE person = ? AND hour >= ? AND hour < ? GROUP BY hour ORDER BY hour"""
OCC = """SELECT hour, count(DISTINCT person) FROM events WHERE address = ? AND hour >= ? AND hour < ?
         GROUP BY GROUPING SETS ((hour), ())"""
OCC_CELLS = """SELECT hour, count(DISTINCT person) FROM events
               WHERE hour >= ? AND hour < ? AND cell IN (SELECT UNNEST(?::BIGINT[]))
               GROUP BY GROUPING SETS ((hour), ())"""
GRID = """SELECT cell, hour, count(DISTINCT person) FROM events
          WHERE hour >= ? AND hour < ? AND cell IN (SELECT UNNEST(?::BIGINT[])) GROUP BY cell, hour"""
NAS = """
    WITH reg AS (
      SELECT DISTINCT person FROM registry
      WHERE valid_from <= to_timestamp($as_of) AND (valid_until IS NULL OR valid_until > to_timestamp($as_of))
    ), inactive AS (
      SELECT person FROM reg r WHERE NOT EXISTS (
        SELECT 1 FROM events e WHERE e.person = r.person AND e.hour >= $hs AND e.hour < $he)
    )
    SELECT i.person, l.last FROM inactive i LEFT JOIN (
      SELECT person, max(hour) AS last FROM events
      WHERE hour < $hs AND person IN (SELECT person FROM inactive) GROUP BY person) l USING (person)"""


def duck_queries(con, as_of):
    """Every parameter set's query on a DuckDB connection, by set name."""
    def who(x):
        return sorted(r[0] for r in con.execute(WHO, [x["from"] // 3600, x["to"] // 3600, x["cells"]]).fetchall())

    def where(x):
        rows = con.execute(WHERE, [x["person"], x["from"] // 3600, x["to"] // 3600]).fetchall()
        return norm_where([(h * 3600, [token(c) for c in cs], ad or [], so) for h, cs, ad, so in rows])

    def occ(x):
        return assemble_occ(con.execute(OCC, [x["address"], x["from"] // 3600, x["to"] // 3600]).fetchall(), x["from"], x["to"])

    def occ_cells(x):
        rows = con.execute(OCC_CELLS, [x["from"] // 3600, x["to"] // 3600, x["cells"]]).fetchall()
        return assemble_occ(rows, x["from"], x["to"])

    def nas(x):
        hs, he = nas_bounds(x, as_of)
        rows = con.execute(NAS, {"as_of": as_of, "hs": hs // 3600, "he": he // 3600}).fetchall()
        return sorted([p, None if h is None else h * 3600] for p, h in rows)

    def grid(x):
        return assemble_grid(con.execute(GRID, [x["from"] // 3600, x["to"] // 3600, x["cells"]]).fetchall())

    return {"circle": who, "rect": who, "where": where, "occ": occ, "nas": nas,
            "occ_circle": occ_cells, "occ_area": occ_cells, "who3k": who, "grid": grid}


def cmd_duckdb(a):
    import duckdb
    P = load(a.params)
    prep = load(os.path.join(a.prep, "prep.json"))
    as_of = P["as_of"]
    res = {"system": "duckdb", "version": duckdb.__version__, "loadavg": loadavg()}
    if os.path.exists(a.db):
        os.remove(a.db)
    con = duckdb.connect(a.db)
    steps = {}

    def step(name, fn):
        t0 = time.time()
        fn()
        steps[name] = time.time() - t0
        print("  duckdb %-22s %7.1f s" % (name, steps[name]), flush=True)

    def small():
        con.execute("CREATE TABLE addresses AS SELECT * FROM read_csv(?, header=true, all_varchar=false)", [os.path.join(a.town, "addresses.csv")])
        con.execute("""CREATE TABLE registry AS SELECT * FROM read_csv(?, header=true,
                       columns={'person': 'UBIGINT', 'address': 'VARCHAR', 'kind': 'VARCHAR', 'valid_from': 'TIMESTAMPTZ', 'valid_until': 'TIMESTAMPTZ'})""",
                    [os.path.join(a.town, "registry.csv")])

    def events():
        # Same prepared CSV as Postgres (the point column is not kept: DuckDB
        # has no geometry type without the spatial extension, and no query
        # uses it). Sorted by (hour, cell) so the row groups' zone maps prune
        # the window and, within it, the cell ranges of a region.
        con.execute("""CREATE TABLE events AS
            SELECT (CASE WHEN person < 0 THEN person::HUGEINT + 18446744073709551616 ELSE person END)::UBIGINT AS person,
                   ts, hour, address, source, cell
            FROM read_csv(?, header=false,
                 columns={'person': 'BIGINT', 'ts': 'TIMESTAMPTZ', 'hour': 'INTEGER', 'geom': 'VARCHAR',
                          'address': 'VARCHAR', 'source': 'VARCHAR', 'cell': 'BIGINT'})
            ORDER BY hour, cell""", [prep["parts"]])

    def checkpoint():
        con.execute("CHECKPOINT")

    step("load addresses+registry", small)
    step("load events (sorted)", events)
    # No ART index on person: DuckDB 2.0's planner used one only for a lone
    # equality filter, never with the window's range beside it (where-was),
    # and no-activity-since is a hash anti-join; zone maps on the sorted hour
    # column do the pruning instead.
    step("checkpoint", checkpoint)
    res["load"] = {"steps": steps, "events_s": steps["load events (sorted)"] + steps["checkpoint"]}
    res["disk"] = os.path.getsize(a.db) + (os.path.getsize(a.db + ".wal") if os.path.exists(a.db + ".wal") else 0)
    res["loadavg_queries"] = loadavg()

    def make_fns():
        c = con.cursor()
        fns = duck_queries(c, as_of)
        fns["_close"] = c.close
        return fns

    run_queries(res, P, duck_queries(con, as_of), make_fns, a.clients)
    res["threads"] = con.execute("SELECT current_setting('threads')").fetchone()[0]
    con.close()
    res["mem_peak"] = proc_status(os.getpid(), "VmHWM")
    dump(a.out, res)
    print("duckdb: VmHWM %d" % res["mem_peak"])
