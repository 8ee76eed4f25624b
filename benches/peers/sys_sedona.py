"""SedonaDB (Apache Sedona's Rust engine on DataFusion), in process: the
prepared rows read from CSV into an in-memory table sorted by (hour, cell)
(timed), then every query set as DataFusion SQL.

SedonaDB has no S2 functions, so, like the other peers, it gets each
region's level-16 cell list (as an IN list). Every query of the
comparison is expressible in its SQL (NOT EXISTS, GROUPING SETS,
array_agg DISTINCT); its spatial functions (ST_DWithin on the points) would
answer a different question (points in the circle, not slice cells that
meet it), so they are not used. One SedonaContext is shared by the client
threads (the Python API has no per-thread session of the same tables)."""
import csv
import os
import time

from common import (assemble_grid, assemble_occ, dump, load, loadavg, nas_bounds, norm_where, parse_ts,
                    proc_status, run_queries, signed, token, unsigned)

WHERE = """SELECT hour, array_agg(DISTINCT cell), array_agg(DISTINCT address) FILTER (WHERE address IS NOT NULL),
                  array_agg(DISTINCT source)
           FROM events WHERE person = $1 AND hour >= $2 AND hour < $3 GROUP BY hour"""
OCC = """SELECT hour, count(DISTINCT person) AS n FROM events WHERE address = $1 AND hour >= $2 AND hour < $3
         GROUP BY GROUPING SETS ((hour), ())"""
NAS = """
    WITH reg AS (
      SELECT DISTINCT person FROM registry
      WHERE valid_from <= $as_of AND (valid_until IS NULL OR valid_until > $as_of)
    ), inactive AS (
      SELECT person FROM reg r WHERE NOT EXISTS (
        SELECT 1 FROM events e WHERE e.person = r.person AND e.hour >= $hs AND e.hour < $he)
    )
    SELECT i.person, l.last FROM inactive i LEFT JOIN (
      SELECT person, max(hour) AS last FROM events
      WHERE hour < $hs AND person IN (SELECT person FROM inactive) GROUP BY person) l ON i.person = l.person"""


def in_list(cells):
    return "(" + ",".join(str(c) for c in cells) + ")"


def rows(df):
    return [tuple(r.values()) for r in df.to_arrow_table().to_pylist()]


def sedona_queries(sd, as_of):
    """Every parameter set's query on a SedonaDB context, by set name."""
    def who(x):
        q = "SELECT DISTINCT person FROM events WHERE hour >= %d AND hour < %d AND cell IN %s" % (
            x["from"] // 3600, x["to"] // 3600, in_list(x["cells"]))
        return sorted(unsigned(r[0]) for r in rows(sd.sql(q)))

    def where(x):
        rs = rows(sd.sql(WHERE).with_params(signed(x["person"]), x["from"] // 3600, x["to"] // 3600))
        return norm_where([(h * 3600, [token(c) for c in cs], ad or [], so) for h, cs, ad, so in rs])

    def occ(x):
        rs = rows(sd.sql(OCC).with_params(x["address"], x["from"] // 3600, x["to"] // 3600))
        return assemble_occ(rs, x["from"], x["to"])

    def occ_cells(x):
        q = ("SELECT hour, count(DISTINCT person) AS n FROM events WHERE hour >= %d AND hour < %d AND cell IN %s "
             "GROUP BY GROUPING SETS ((hour), ())") % (x["from"] // 3600, x["to"] // 3600, in_list(x["cells"]))
        return assemble_occ(rows(sd.sql(q)), x["from"], x["to"])

    def nas(x):
        hs, he = nas_bounds(x, as_of)
        rs = rows(sd.sql(NAS).with_params(as_of=as_of, hs=hs // 3600, he=he // 3600))
        return sorted([unsigned(p), None if h is None else h * 3600] for p, h in rs)

    def grid(x):
        q = ("SELECT cell, hour, count(DISTINCT person) AS n FROM events WHERE hour >= %d AND hour < %d AND cell IN %s "
             "GROUP BY cell, hour") % (x["from"] // 3600, x["to"] // 3600, in_list(x["cells"]))
        return assemble_grid(rows(sd.sql(q)))

    return {"circle": who, "rect": who, "where": where, "occ": occ, "nas": nas,
            "occ_circle": occ_cells, "occ_area": occ_cells, "who3k": who, "grid": grid}


def registry_table(town):
    """The registry with signed person ids and unix-second bounds (the CSV's
    u64 ids do not fit DataFusion's BIGINT)."""
    import pyarrow as pa
    person, vf, vu = [], [], []
    with open(os.path.join(town, "registry.csv"), newline="") as f:
        for row in csv.DictReader(f):
            person.append(signed(int(row["person"])))
            vf.append(parse_ts(row["valid_from"]))
            vu.append(parse_ts(row["valid_until"]) if row["valid_until"] else None)
    return pa.table({"person": pa.array(person, pa.int64()), "valid_from": pa.array(vf, pa.int64()),
                     "valid_until": pa.array(vu, pa.int64())})


def cmd_sedona(a):
    import warnings
    warnings.filterwarnings("ignore")  # PROJ/GDAL are not needed for these queries
    import sedonadb
    P = load(a.params)
    prep = load(os.path.join(a.prep, "prep.json"))
    as_of = P["as_of"]
    res = {"system": "sedonadb", "version": sedonadb.__version__, "loadavg": loadavg()}
    sd = sedonadb.connect()
    steps = {}

    def step(name, fn):
        t0 = time.time()
        fn()
        steps[name] = time.time() - t0
        print("  sedonadb %-22s %7.1f s" % (name, steps[name]), flush=True)

    def small():
        sd.create_data_frame(registry_table(a.town)).to_memtable().to_view("registry")

    def events():
        d = os.path.dirname(prep["parts"][0])
        sd.sql("""CREATE EXTERNAL TABLE events_csv (person BIGINT, ts VARCHAR, hour INT, geom VARCHAR,
                  address VARCHAR, source VARCHAR, cell BIGINT)
                  STORED AS CSV LOCATION '%s/events_*.csv' OPTIONS ('has_header' 'false')""" % d).execute()
        sd.sql("SELECT person, hour, address, source, cell FROM events_csv ORDER BY hour, cell").to_memtable().to_view("events")
        n = rows(sd.sql("SELECT count(*) FROM events"))[0][0]
        if n != prep["events"]:
            raise RuntimeError("sedonadb read %d events, the prepared rows hold %d" % (n, prep["events"]))

    step("load registry", small)
    step("load events (sorted, in memory)", events)
    res["load"] = {"steps": steps, "events_s": steps["load events (sorted, in memory)"]}
    res["disk"] = None  # in memory
    res["loadavg_queries"] = loadavg()

    def make_fns():
        return sedona_queries(sd, as_of)

    run_queries(res, P, sedona_queries(sd, as_of), make_fns, a.clients)
    res["mem_peak"] = proc_status(os.getpid(), "VmHWM")
    dump(a.out, res)
    print("sedonadb: VmHWM %d" % res["mem_peak"])
