#!/usr/bin/env python3
"""hourcell vs PostgreSQL+PostGIS vs DuckDB on the same generated town.

Driven by run.sh, which installs things, starts/stops the servers and calls
the subcommands below in order. Each phase writes a JSON file in the work
directory; `compare` checks that the three systems give identical answers
and `report` prints the markdown table.
"""
import argparse
import csv
import datetime as dt
import glob
import json
import math
import multiprocessing as mp
import os
import random
import resource
import statistics
import subprocess
import sys
import threading
import time

import s2sphere as s2

EARTH_M = 6371010.0
LEVEL = 16
U64 = 1 << 64
I63 = 1 << 63


def signed(u):
    return u - U64 if u >= I63 else u


def unsigned(i):
    return i + U64 if i < 0 else i


def token(cell_signed):
    return s2.CellId(unsigned(cell_signed)).to_token()


def parse_ts(s):
    return int(dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp())


def iso(unix):
    return dt.datetime.fromtimestamp(unix, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def cell_of(lat, lng):
    return s2.CellId.from_lat_lng(s2.LatLng.from_degrees(lat, lng)).parent(LEVEL).id()


def dump(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.replace(path + ".tmp", path)


def load(path):
    with open(path) as f:
        return json.load(f)


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


# --------------------------------------------------------------- prep

def _read_addresses(town):
    pts = {}
    with open(os.path.join(town, "addresses.csv"), newline="") as f:
        for row in csv.DictReader(f):
            pts[row["code"]] = (float(row["lat"]), float(row["lng"]))
    return pts


def _prep_chunk(args):
    town, start, end, out, idx = args
    pts = _read_addresses(town)
    cell_cache = {}
    hour_cache = {}
    persons = set()
    addr_count = {}
    n = 0
    with open(os.path.join(town, "events.csv"), "rb") as f, open(out, "w", newline="") as o:
        if start:
            f.seek(start - 1)
            f.readline()  # a line that starts before `start` belongs to the previous chunk
        w = o.write
        while f.tell() <= end:
            line = f.readline()
            if not line:
                break
            if line.startswith(b"person,"):
                continue
            person, ts, lat, lng, address, source = line.decode().rstrip("\n").split(",")
            key = (lat, lng, address)
            c = cell_cache.get(key)
            if c is None:
                if lat:
                    la, ln = float(lat), float(lng)
                else:
                    la, ln = pts[address]
                c = (signed(cell_of(la, ln)), "%.6f %.6f" % (ln, la))
                cell_cache[key] = c
            h = hour_cache.get(ts[:13])
            if h is None:
                h = parse_ts(ts[:13] + ":00:00Z") // 3600
                hour_cache[ts[:13]] = h
            p = int(person)
            persons.add(p)
            if address:
                addr_count[address] = addr_count.get(address, 0) + 1
            # person,ts,hour,geom,address,source,cell
            w("%d,%s,%d,SRID=4326;POINT(%s),%s,%s,%d\n" % (signed(p), ts, h, c[1], address, source, c[0]))
            n += 1
    return idx, n, sorted(persons), addr_count


def cmd_prep(a):
    src = os.path.join(a.town, "events.csv")
    size = os.path.getsize(src)
    os.makedirs(a.out, exist_ok=True)
    k = max(1, a.workers * 4)
    bounds = [size * i // k for i in range(k + 1)]
    jobs = [(a.town, bounds[i], bounds[i + 1] - 1 if i + 1 < k else size, os.path.join(a.out, "events_%03d.csv" % i), i)
            for i in range(k)]
    t0 = time.time()
    persons, addrs, total = set(), {}, 0
    with mp.Pool(a.workers) as pool:
        for idx, n, ps, ac in pool.imap_unordered(_prep_chunk, jobs):
            total += n
            persons.update(ps)
            for code, c in ac.items():
                addrs[code] = addrs.get(code, 0) + c
    secs = time.time() - t0
    dump(os.path.join(a.out, "prep.json"), {
        "events": total, "seconds": secs, "parts": [j[3] for j in jobs],
        "persons": sorted(persons), "addresses": addrs})
    print("prep: %d events, %d parts, %.1f s (%d workers)" % (total, k, secs, a.workers))


# ------------------------------------------------------------- params

def cap_cells(lat, lng, radius_m):
    cap = s2.Cap.from_axis_angle(s2.LatLng.from_degrees(lat, lng).to_point(),
                                 s2.Angle.from_radians(radius_m / EARTH_M))
    cov = s2.RegionCoverer()
    cov.min_level = cov.max_level = LEVEL
    cov.max_cells = 1 << 20
    return sorted(signed(c.id()) for c in cov.get_covering(cap) if cap.may_intersect(s2.Cell(c)))


def rect_cells(lat1, lng1, lat2, lng2):
    rect = s2.LatLngRect.from_point_pair(s2.LatLng.from_degrees(lat1, lng1), s2.LatLng.from_degrees(lat2, lng2))
    cov = s2.RegionCoverer()
    cov.min_level = cov.max_level = LEVEL
    cov.max_cells = 1 << 20
    exact, loose = [], 0
    for c in cov.get_covering(rect):
        cell = s2.Cell(c)
        if rect.may_intersect(cell):  # bounding-box test: conservative
            loose += 1
            if rect.intersects(cell):  # S2's exact cell/rect test
                exact.append(signed(c.id()))
    return sorted(exact), loose


def cmd_params(a):
    rnd = random.Random(a.seed)
    prep = load(os.path.join(a.prep, "prep.json"))
    pts = _read_addresses(a.town)
    codes = sorted(pts)
    start = a.start
    days = a.days
    as_of = start + days * 86400
    persons = prep["persons"]
    used = sorted(c for c, n in prep["addresses"].items() if n > 0)

    def day():
        d = start + rnd.randrange(days) * 86400
        return d, d + 86400

    p = {"as_of": as_of, "start": start, "days": days, "circle": [], "rect": [], "where": [], "occ": [], "nas": []}
    t0 = time.time()
    for _ in range(a.n):
        lat, lng = pts[rnd.choice(codes)]
        f, t = day()
        p["circle"].append({"lat": lat, "lng": lng, "r": 1000.0, "from": f, "to": t, "cells": cap_cells(lat, lng, 1000.0)})
    cover_circle = (time.time() - t0) / a.n
    t0 = time.time()
    loose_extra = 0
    for _ in range(a.n):
        lat, lng = pts[rnd.choice(codes)]
        dlat, dlng = 0.0045, 0.0052  # about 1 km x 1 km
        f, t = day()
        cells, loose = rect_cells(lat - dlat, lng - dlng, lat + dlat, lng + dlng)
        loose_extra += loose - len(cells)
        p["rect"].append({"lat1": lat - dlat, "lng1": lng - dlng, "lat2": lat + dlat, "lng2": lng + dlng,
                          "from": f, "to": t, "cells": cells})
    cover_rect = (time.time() - t0) / a.n
    for _ in range(a.n):
        d = start + rnd.randrange(days - 7 + 1) * 86400
        p["where"].append({"person": rnd.choice(persons), "from": d, "to": d + 7 * 86400})
    for _ in range(a.n):
        f, t = day()
        p["occ"].append({"address": rnd.choice(used), "from": f, "to": t})
    for _ in range(a.nas):
        p["nas"].append({"since": as_of - 7 * 86400})
    p["cover_ms"] = {"circle": cover_circle * 1000, "rect": cover_rect * 1000}
    p["rect_bbox_only_extra_cells"] = loose_extra
    dump(a.out, p)
    print("params: %d each, circle covering %.0f cells (%.1f ms in python), rect %.0f cells (%.1f ms); "
          "bounding-box-only test would add %d cells over all rects" % (
              a.n, statistics.mean(len(x["cells"]) for x in p["circle"]), cover_circle * 1000,
              statistics.mean(len(x["cells"]) for x in p["rect"]), cover_rect * 1000, loose_extra))


# ---------------------------------------------------------- memory

def proc_status(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PssSampler(threading.Thread):
    """Peak of the summed PSS of a process and its children (Postgres)."""

    def __init__(self, root_pid, interval=0.5):
        super().__init__(daemon=True)
        self.root, self.interval, self.peak, self.stop_ev = root_pid, interval, 0, threading.Event()
        self.hwm_max = 0

    def pids(self):
        out = [self.root]
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open("/proc/%s/stat" % d) as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == self.root:
                            out.append(int(d))
                except (OSError, IndexError, ValueError):
                    pass
        return out

    def sample(self):
        total = 0
        for pid in self.pids():
            try:
                with open("/proc/%d/smaps_rollup" % pid) as f:
                    for line in f:
                        if line.startswith("Pss:"):
                            total += int(line.split()[1]) * 1024
                            break
            except OSError:
                pass
            h = proc_status(pid, "VmHWM")
            if h:
                self.hwm_max = max(self.hwm_max, h)
        self.peak = max(self.peak, total)

    def run(self):
        while not self.stop_ev.is_set():
            self.sample()
            self.stop_ev.wait(self.interval)

    def stop(self):
        self.stop_ev.set()
        self.join()
        self.sample()


# ------------------------------------------------------------ timing

def timed(fn, params, warm=True):
    """Run fn over the whole parameter list once untimed (warm-up), then timed."""
    if warm:
        for q in params:
            fn(q)
    lat, out = [], []
    for q in params:
        t0 = time.perf_counter()
        r = fn(q)
        lat.append((time.perf_counter() - t0) * 1000)
        out.append(r)
    return {"p50": pct(lat, 50), "p99": pct(lat, 99), "max": max(lat), "n": len(lat)}, out


def norm_where(hours):
    # [(hour_unix, cells, addresses, sources)] sorted, each list sorted
    return [[h, sorted(c), sorted(a), sorted(s)] for h, c, a, s in sorted(hours)]


def du(path):
    return int(subprocess.check_output(["du", "-sb", path]).split()[0])


# ----------------------------------------------------------- hourcell

# Person-level queries carry a purpose and case, and each is audited
# (committed, synced) before it is answered: part of what is measured.
PURPOSE = "comparison benchmark on a generated town"
CASE = "BENCH"


def grpc_stubs(gen_dir):
    sys.path.insert(0, gen_dir)
    import grpc  # noqa
    from hourcell.v1 import hourcell_pb2 as pb, hourcell_pb2_grpc as rpc  # noqa
    return grpc, pb, rpc


def hourcell_queries(pb, q, as_of):
    """The comparison's five queries as calls on a QueryStub `q`."""
    def win(f, t):
        return pb.Window(start=f, end=t, as_of=as_of)

    def who_circle(x):
        reg = pb.Region(circle=pb.Circle(lat=x["lat"], lng=x["lng"], radius_m=x["r"]))
        ps = []
        for m in q.WhoWasAt(pb.WhoWasAtRequest(region=reg, window=win(x["from"], x["to"]), purpose=PURPOSE, case_ref=CASE)):
            ps.extend(m.persons)
        return ps

    def who_rect(x):
        reg = pb.Region(rect=pb.Rect(lat_lo=x["lat1"], lng_lo=x["lng1"], lat_hi=x["lat2"], lng_hi=x["lng2"]))
        ps = []
        for m in q.WhoWasAt(pb.WhoWasAtRequest(region=reg, window=win(x["from"], x["to"]), purpose=PURPOSE, case_ref=CASE)):
            ps.extend(m.persons)
        return ps

    def where(x):
        r = q.WhereWas(pb.WhereWasRequest(person=x["person"], window=win(x["from"], x["to"]), purpose=PURPOSE, case_ref=CASE))
        return norm_where([(h.hour, list(h.cells), list(h.addresses), list(h.sources)) for h in r.hours])

    def occ(x):
        reg = pb.Region(addresses=pb.AddressList(codes=[x["address"]]))
        r = q.Occupancy(pb.OccupancyRequest(region=reg, window=win(x["from"], x["to"])))
        return {"distinct": r.distinct, "hours": [[h.hour, h.distinct] for h in r.hours]}

    def nas(x):
        out = []
        for m in q.NoActivitySince(pb.NoActivitySinceRequest(since=x["since"], as_of=as_of, purpose=PURPOSE, case_ref=CASE)):
            out.extend([p.person, p.last_seen if p.HasField("last_seen") else None] for p in m.persons)
        return out

    return who_circle, who_rect, where, occ, nas


def cmd_hourcell(a):
    P = load(a.params)
    as_of = P["as_of"]
    res = {"system": "hourcell", "loadavg": loadavg()}
    server = "http://" + a.listen
    hc = a.bin

    def imp(kind, path, batch=None):
        cmd = [hc, "import", "--kind", kind, path, "--server", server]
        if batch:
            cmd += ["--batch", str(batch)]
        t0 = time.time()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        return time.time() - t0, (out.stdout + out.stderr).strip()

    t_a, o_a = imp("addresses", os.path.join(a.town, "addresses.csv"))
    t_r, o_r = imp("registry", os.path.join(a.town, "registry.csv"))
    t_e, o_e = imp("events", os.path.join(a.town, "events.csv"), a.batch)
    print("hourcell import: addresses %.1f s, registry %.1f s, events %.1f s\n  %s" % (t_a, t_r, t_e, o_e.splitlines()[-1] if o_e else ""))
    res["load"] = {"events_s": t_e, "other_s": t_a + t_r, "import_output": o_e[-2000:]}
    st = subprocess.run([hc, "status", "--server", server], check=True, capture_output=True, text=True).stdout
    res["status"] = st
    res["disk_after_load"] = du(a.data)

    grpc, pb, rpc = grpc_stubs(a.gen)
    ch = grpc.insecure_channel(a.listen, options=[("grpc.max_receive_message_length", 256 << 20)])
    admin = rpc.AdminStub(ch)
    t0 = time.time()
    cr = admin.Compact(pb.CompactRequest(), timeout=3600)
    res["compact_s"] = time.time() - t0
    res["disk_after_compact"] = du(a.data)
    res["compact_rpc"] = {"before": cr.disk_bytes_before, "after": cr.disk_bytes_after}
    q = rpc.QueryStub(ch)

    who_circle, who_rect, where, occ, nas = hourcell_queries(pb, q, as_of)
    run_queries(res, P, who_circle, who_rect, where, occ, nas)

    # the CLI's JSON must say the same as gRPC (first few parameters)
    def cli(*args):
        extra = [] if args[0] == "occupancy" else ["--purpose", PURPOSE, "--case", CASE]
        out = subprocess.run([hc, "query", *args, *extra, "--as-of", iso(as_of), "--format", "json", "--server", server],
                             check=True, capture_output=True, text=True).stdout
        # person ids are strings in the CLI's JSON (proto3 JSON mapping)
        return json.loads(out, object_hook=lambda o: {k: ([int(p) for p in v] if k == "persons" and v and isinstance(v[0], str) else int(v) if k == "person" else v) for k, v in o.items()})

    bad = []
    for i in range(min(a.cli_checks, len(P["circle"]))):
        x = P["circle"][i]
        j = cli("who-was-at", "--circle", "%r,%r,%r" % (x["lat"], x["lng"], x["r"]), "--from", iso(x["from"]), "--to", iso(x["to"]))
        if j["persons"] != res["answers"]["circle"][i]:
            bad.append(("circle", i))
        x = P["rect"][i]
        j = cli("who-was-at", "--rect", "%r,%r,%r,%r" % (x["lat1"], x["lng1"], x["lat2"], x["lng2"]), "--from", iso(x["from"]), "--to", iso(x["to"]))
        if j["persons"] != res["answers"]["rect"][i]:
            bad.append(("rect", i))
        x = P["where"][i]
        j = cli("where-was", "--person", str(x["person"]), "--from", iso(x["from"]), "--to", iso(x["to"]))
        got = norm_where([(parse_ts(h["hour"]), h["cells"], h["addresses"], h["sources"]) for h in j["hours"]])
        if got != res["answers"]["where"][i]:
            bad.append(("where", i))
        x = P["occ"][i]
        j = cli("occupancy", "--addresses", x["address"], "--from", iso(x["from"]), "--to", iso(x["to"]))
        got = {"distinct": j["distinct"], "hours": [[parse_ts(h["hour"]), h["distinct"]] for h in j["hours"]]}
        if got != res["answers"]["occ"][i]:
            bad.append(("occ", i))
    if P["nas"]:
        j = cli("no-activity-since", "--since", iso(P["nas"][0]["since"]))
        got = [[p["person"], parse_ts(p["last_seen"]) if p["last_seen"] else None] for p in j["persons"]]
        if got != res["answers"]["nas"][0]:
            bad.append(("nas", 0))
    res["cli_mismatches"] = bad
    if bad:
        print("hourcell: CLI JSON and gRPC disagree: %s" % bad, file=sys.stderr)
    res["mem_peak"] = proc_status(a.pid, "VmHWM")
    dump(a.out, res)
    print("hourcell: disk %d -> %d bytes after compact, VmHWM %d" % (res["disk_after_load"], res["disk_after_compact"], res["mem_peak"]))


def run_queries(res, P, who_circle, who_rect, where, occ, nas):
    res["latency"], res["answers"] = {}, {}
    for name, fn in (("circle", who_circle), ("rect", who_rect), ("where", where), ("occ", occ), ("nas", nas)):
        t0 = time.time()
        res["latency"][name], res["answers"][name] = timed(fn, P[name])
        l = res["latency"][name]
        print("  %-7s p50 %8.2f ms  p99 %8.2f ms  (%.0f s)" % (name, l["p50"], l["p99"], time.time() - t0), flush=True)


def cmd_floor(a):
    """What every hourcell answer pays before query work, measured through
    the same Python client the comparison uses, on a node already loaded by
    `run.sh --keep`: (1) a unary round trip that does almost nothing
    (occupancy of one address); (1b) where-was of a person with no events
    (unary, one synced audit record); (2) who-was-at with the comparison's circles
    and windows moved to a place with no data (covering, one synced audit
    record, an empty stream; no ids); (3) append + fdatasync of an audit-
    sized record on the data directory's disk; (4) decoding an answer of the
    circle's mean size in Python. Prints p50/p90/p99 of each."""
    P = load(a.params)
    grpc, pb, rpc = grpc_stubs(a.gen)
    ch = grpc.insecure_channel(a.listen, options=[("grpc.max_receive_message_length", 256 << 20)])
    q = rpc.QueryStub(ch)
    as_of = P["as_of"]

    who, _, where, occ, _ = hourcell_queries(pb, q, as_of)

    # The same circles, 40 S 100 W: open ocean, nobody there.
    empty = [dict(x, lat=-40.0, lng=-100.0) for x in P["circle"]]
    sizes = [len(who(x)) for x in P["circle"]]
    assert all(len(who(x)) == 0 for x in empty[:5]), "the empty place is not empty"

    def dist(fn, params):
        lat = []
        for _ in range(a.rounds):
            for x in params:
                t0 = time.perf_counter()
                fn(x)
                lat.append((time.perf_counter() - t0) * 1000)
        return lat

    def line(name, lat):
        print("| %s | %d | %.3f ms | %.3f ms | %.3f ms |" % (name, len(lat), pct(lat, 50), pct(lat, 90), pct(lat, 99)))

    print("| what | samples | p50 | p90 | p99 |")
    print("|---|---:|---:|---:|---:|")
    line("occupancy of one address (unary round trip)", dist(occ, P["occ"]))
    # A person id the town never uses: a unary answer, audited, empty.
    nobody = [dict(x, person=999_999_999) for x in P["where"]]
    assert not where(nobody[0]), "person 999999999 has events"
    line("where-was of a person with no events (unary, audited)", dist(where, nobody))
    line("who-was-at, the circles moved to an empty place", dist(who, empty))
    line("who-was-at, the comparison's circles", dist(who, P["circle"]))
    probe = os.path.join(a.data, "floor-probe")
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        lat = []
        for _ in range(2000):
            t0 = time.perf_counter()
            os.write(fd, b"a" * 300)
            os.fdatasync(fd)
            lat.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
        os.unlink(probe)
    line("append 300 bytes + fdatasync on the data disk", lat)
    mean = round(sum(sizes) / len(sizes))
    rnd = random.Random(1)
    body = pb.WhoWasAtResponse(persons=sorted(rnd.sample(range(1, 10 * mean + 1), mean))).SerializeToString()
    lat = []
    for _ in range(2000):
        t0 = time.perf_counter()
        m = pb.WhoWasAtResponse()
        m.ParseFromString(body)
        ps = []
        ps.extend(m.persons)
        lat.append((time.perf_counter() - t0) * 1000)
    line("Python: decode an answer of %d persons (%d bytes)" % (mean, len(body)), lat)


# ----------------------------------------------------------- postgres

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


def assemble_occ(rows, f, t):
    total = 0
    per = {}
    for h, n in rows:
        if h is None:
            total = n
        else:
            per[h] = n
    return {"distinct": total, "hours": [[h * 3600, per.get(h, 0)] for h in range(f // 3600, t // 3600)]}


def nas_bounds(x, as_of):
    hs = x["since"] // 3600 * 3600
    he = as_of // 3600 * 3600 + 3600  # the hour containing as_of is seen
    return hs, he


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

    def who(x):
        return sorted(unsigned(r[0]) for r in conn.execute(PG_WHO, (x["cells"], x["from"] // 3600, x["to"] // 3600)))

    def where(x):
        rows = conn.execute(PG_WHERE, (signed(x["person"]), x["from"], x["to"])).fetchall()
        return norm_where([(h * 3600, [token(c) for c in cs], ad, so) for h, cs, ad, so in rows])

    def occ(x):
        rows = conn.execute(PG_OCC, (x["address"], x["from"] // 3600, x["to"] // 3600)).fetchall()
        return assemble_occ(rows, x["from"], x["to"])

    def nas(x):
        hs, he = nas_bounds(x, as_of)
        rows = conn.execute(PG_NAS, {"as_of": as_of, "hs": hs, "he": he}).fetchall()
        return sorted([unsigned(p), None if h is None else h * 3600] for p, h in rows)

    run_queries(res, P, who, who, where, occ, nas)
    res["plans"] = {
        "who": explain(conn, PG_WHO, (P["circle"][0]["cells"], P["circle"][0]["from"] // 3600, P["circle"][0]["to"] // 3600)),
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


# ------------------------------------------------------------- duckdb

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
    print("  duckdb file %d bytes" % res["disk"], flush=True)

    WHO = "SELECT DISTINCT person FROM events WHERE hour >= ? AND hour < ? AND cell IN (SELECT UNNEST(?::BIGINT[]))"
    WHERE = """SELECT hour, list(DISTINCT cell), list(DISTINCT address) FILTER (WHERE address IS NOT NULL), list(DISTINCT source)
               FROM events WHERE person = ? AND hour >= ? AND hour < ? GROUP BY hour ORDER BY hour"""
    OCC = """SELECT hour, count(DISTINCT person) FROM events WHERE address = ? AND hour >= ? AND hour < ?
             GROUP BY GROUPING SETS ((hour), ())"""
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

    def who(x):
        return sorted(r[0] for r in con.execute(WHO, [x["from"] // 3600, x["to"] // 3600, x["cells"]]).fetchall())

    def where(x):
        rows = con.execute(WHERE, [x["person"], x["from"] // 3600, x["to"] // 3600]).fetchall()
        return norm_where([(h * 3600, [token(c) for c in cs], ad or [], so) for h, cs, ad, so in rows])

    def occ(x):
        return assemble_occ(con.execute(OCC, [x["address"], x["from"] // 3600, x["to"] // 3600]).fetchall(), x["from"], x["to"])

    def nas(x):
        hs, he = nas_bounds(x, as_of)
        rows = con.execute(NAS, {"as_of": as_of, "hs": hs // 3600, "he": he // 3600}).fetchall()
        return sorted([p, None if h is None else h * 3600] for p, h in rows)

    run_queries(res, P, who, who, where, occ, nas)
    res["threads"] = con.execute("SELECT current_setting('threads')").fetchone()[0]
    con.close()
    res["mem_peak"] = proc_status(os.getpid(), "VmHWM")
    dump(a.out, res)
    print("duckdb: VmHWM %d" % res["mem_peak"])


# ------------------------------------------------------------ compare

def cmd_compare(a):
    R = {n: load(os.path.join(a.work, "result_%s.json" % n)) for n in ("hourcell", "postgres", "duckdb")}
    P = load(a.params)
    bad = []
    for q in ("circle", "rect", "where", "occ", "nas"):
        for i in range(len(P[q])):
            h = R["hourcell"]["answers"][q][i]
            for peer in ("postgres", "duckdb"):
                o = R[peer]["answers"][q][i]
                if o != h:
                    bad.append({"query": q, "i": i, "peer": peer, "param": {k: v for k, v in P[q][i].items() if k != "cells"},
                                "detail": diff(h, o)})
    sizes = {q: statistics.mean(size_of(q, x) for x in R["hourcell"]["answers"][q]) for q in ("circle", "rect", "where", "occ", "nas")}
    dump(os.path.join(a.work, "compare.json"), {"mismatches": bad, "mean_answer_size": sizes})
    if bad:
        for b in bad[:20]:
            print("MISMATCH", json.dumps(b)[:600], file=sys.stderr)
        print("compare: %d MISMATCHES (see %s/compare.json)" % (len(bad), a.work), file=sys.stderr)
        sys.exit(1)
    print("compare: all %d answers identical across hourcell, postgres and duckdb (mean sizes %s)" % (
        sum(len(P[q]) for q in ("circle", "rect", "where", "occ", "nas")),
        ", ".join("%s %.0f" % kv for kv in sizes.items())))


def size_of(q, x):
    if q == "occ":
        return x["distinct"]
    return len(x)


def diff(h, o):
    if isinstance(h, list) and h and not isinstance(h[0], list):
        hs, os_ = set(h), set(o)
        return {"only_hourcell": sorted(hs - os_)[:10], "only_peer": sorted(os_ - hs)[:10], "n_hourcell": len(hs), "n_peer": len(os_)}
    return {"hourcell": str(h)[:300], "peer": str(o)[:300]}


# ------------------------------------------------------------- report

def human(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return ("%.0f %s" if unit == "B" else "%.1f %s") % (n, unit)
        n /= 1024.0


def faster(peer, mine):
    r = peer / mine
    return "%.1f× faster" % r if r >= 1 else "%.1f× slower" % (1 / r)


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def cmd_report(a):
    R = {n: load(os.path.join(a.work, "result_%s.json" % n)) for n in ("hourcell", "postgres", "duckdb")}
    P = load(a.params)
    C = load(os.path.join(a.work, "compare.json"))
    prep = load(os.path.join(a.prep, "prep.json"))
    ev = prep["events"]
    h, pg, dk = R["hourcell"], R["postgres"], R["duckdb"]
    rate = {k: ev / R[k]["load"]["events_s"] for k in R}
    disk = {"hourcell": h["disk_after_compact"], "postgres": pg["disk"], "duckdb": dk["disk"]}
    mem = {k: R[k]["mem_peak"] for k in R}
    lines = []
    w = lines.append
    ok = lambda b: "met" if b else "**not met**"

    def lat(k, q, p):
        return R[k]["latency"][q][p]

    def ms(x):
        return "%.2f ms" % x if x < 100 else "%.0f ms" % x

    w("### %s: %d persons × %d days, %s events" % (a.date, a.persons, P["days"], "{:,}".format(ev)))
    w("")
    w("Machine: %s. Command: `%s`. %s (repository at %s); %s; PostGIS %s; DuckDB %s (Python, %s threads). "
      "1-minute load average before each system's phase: hourcell %s, PostgreSQL %s, DuckDB %s (the harness and the "
      "system under test share the cores)." % (
        a.machine, a.command, a.hc_version, a.commit, pg["version"].split(" on ")[0], pg["postgis"], dk["version"], dk["threads"],
        h.get("loadavg"), pg.get("loadavg"), dk.get("loadavg")))
    w("")
    w("Answers were checked identical across the three systems for every query below (%d parameter sets, %s)." % (
        sum(len(P[q]) for q in ("circle", "rect", "where", "occ", "nas")),
        "no mismatch" if not C["mismatches"] else "%d MISMATCHES" % len(C["mismatches"])))
    w("")
    w("| metric | hourcell | PostgreSQL + PostGIS | DuckDB | hourcell vs PostGIS (goal) | hourcell vs DuckDB (goal) |")
    w("|---|---:|---:|---:|---|---|")
    w("| load, events/s (higher is better) | %s | %s | %s | %.1f× (≥ 5×: %s) | %.1f× |" % (
        "{:,.0f}".format(rate["hourcell"]), "{:,.0f}".format(rate["postgres"]), "{:,.0f}".format(rate["duckdb"]),
        rate["hourcell"] / rate["postgres"], ok(rate["hourcell"] >= 5 * rate["postgres"]), rate["hourcell"] / rate["duckdb"]))
    goals = {"circle": 20, "rect": 20, "where": None, "occ": 100, "nas": 10}
    names = {"circle": "who-was-at, 1 km circle, 24 h", "rect": "who-was-at, ~1 km² rect, 24 h",
             "where": "where-was, 1 person, 7 days", "occ": "occupancy, 1 address, 24 h", "nas": "no-activity-since, 7 days"}
    sizes = C["mean_answer_size"]
    for q in ("circle", "rect", "where", "occ", "nas"):
        for p in ("p50", "p99"):
            hv, pv, dv = lat("hourcell", q, p), lat("postgres", q, p), lat("duckdb", q, p)
            g = goals[q]
            vs_pg = faster(pv, hv)
            if g and p == "p99":
                vs_pg += " (≥ %d×: %s)" % (g, ok(pv / hv >= g))
            vs_dk = faster(dv, hv)
            if p == "p99":
                vs_dk += " (faster: %s)" % ok(hv < dv)
            label = "%s (mean answer %.0f %s), %s" % (names[q], sizes[q], "hours" if q == "where" else "distinct" if q == "occ" else "persons", p)
            w("| %s | %s | %s | %s | %s | %s |" % (label, ms(hv), ms(pv), ms(dv), vs_pg, vs_dk))
    w("| disk footprint (lower is better) | %s | %s | %s | %.2f of it (≤ 0.20: %s) | %.2f of it (smaller: %s) |" % (
        human(disk["hourcell"]), human(disk["postgres"]), human(disk["duckdb"]),
        disk["hourcell"] / disk["postgres"], ok(disk["hourcell"] <= 0.2 * disk["postgres"]),
        disk["hourcell"] / disk["duckdb"], ok(disk["hourcell"] < disk["duckdb"])))
    w("| peak memory | %s | %s | %s | %.2f of it | %.2f of it |" % (
        human(mem["hourcell"]), human(mem["postgres"]), human(mem["duckdb"]), mem["hourcell"] / mem["postgres"], mem["hourcell"] / mem["duckdb"]))
    w("")
    pst = pg["load"]["steps"]
    dst = dk["load"]["steps"]
    w("Details:")
    w("")
    w("- **Load.** hourcell: `hourcell import --kind events --batch %d` over gRPC (3 batches in flight, the default), every batch synced before it is acknowledged: %.1f s "
      "(addresses and registry before it: %.1f s). PostgreSQL: `COPY ... FREEZE` of the events in one transaction %.1f s + "
      "index builds %.1f s + `VACUUM ANALYZE` %.1f s (a `CHECKPOINT` after it took %.1f s more, not counted). DuckDB: "
      "`CREATE TABLE AS SELECT ... ORDER BY hour, cell` from the CSV %.1f s + `CHECKPOINT` %.1f s (no index: zone maps on the sorted hour column; its planner used an ART index on person only for a lone equality, not with the window beside it). "
      "The peers load a CSV in which the harness already computed each event's point, hour and S2 level-16 cell "
      "(%.1f s on %d processes, not counted in their load time); hourcell computes those itself during ingest." % (
          a.batch, h["load"]["events_s"], h["load"]["other_s"], pst["copy events"], pst["create indexes"], pst["vacuum analyze"],
          pst["checkpoint"], dst["load events (sorted)"], dst["checkpoint"], prep["seconds"], a.workers))
    w("- **Queries.** %d parameter sets per query (seed %d: circle centres and rectangles around random address points, "
      "random persons with events, random addresses with events, random whole days), one untimed pass, then one timed pass; "
      "no-activity-since is one query (since = as_of − 7 days) repeated %d times. hourcell is measured through gRPC from Python "
      "(`grpcio`, one channel), after `Admin.Compact`; PostgreSQL through `psycopg` on a loopback TCP connection; DuckDB in process. "
      "The peers get the region's level-16 cell list computed beforehand, outside the timing (s2sphere in Python took "
      "%.1f ms per circle and %.1f ms per rectangle); hourcell's times include its own covering." % (
          len(P["circle"]), a.seed, len(P["nas"]), P["cover_ms"]["circle"], P["cover_ms"]["rect"]))
    rel = pg["relations"]
    w("- **Disk.** hourcell: `du -sb` of the data directory after `Admin.Compact` (%s right after the load). PostgreSQL: "
      "`pg_total_relation_size` of the three tables with their indexes (events heap %s, GiST on geom %s, (cell, hour) %s, "
      "(address, hour) %s, (person, ts) %s; the data directory without WAL is %s). DuckDB: the database file after `CHECKPOINT`." % (
          human(h["disk_after_load"]), human(rel.get("events", 0)), human(rel.get("events_geom", 0)), human(rel.get("events_cell_hour", 0)),
          human(rel.get("events_address_hour", 0)), human(rel.get("events_person_ts", 0)), human(pg["disk_datadir_minus_wal"])))
    w("- **Memory.** hourcell: VmHWM of the node (block cache 1 GiB). PostgreSQL (shared_buffers 1 GiB): peak of the summed PSS of the "
      "postmaster and its children, sampled every 0.5 s through load and queries (largest single-process VmHWM %s). "
      "DuckDB: VmHWM of the Python process that loaded and queried it (default memory limit)." % human(pg["mem_max_single_hwm"]))
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("prep")
    s.add_argument("--town", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--workers", type=int, default=os.cpu_count())
    s = sub.add_parser("params")
    s.add_argument("--town", required=True)
    s.add_argument("--prep", required=True)
    s.add_argument("--seed", type=int, default=42)
    s.add_argument("--n", type=int, default=50)
    s.add_argument("--nas", type=int, default=50)
    s.add_argument("--start", type=int, required=True)
    s.add_argument("--days", type=int, required=True)
    s.add_argument("--out", required=True)
    s = sub.add_parser("hourcell")
    for k in ("--bin", "--town", "--params", "--listen", "--data", "--gen", "--out"):
        s.add_argument(k, required=True)
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--batch", type=int, default=20000)
    s.add_argument("--cli-checks", type=int, default=5)
    s = sub.add_parser("floor")
    for k in ("--params", "--gen", "--listen", "--data"):
        s.add_argument(k, required=True)
    s.add_argument("--rounds", type=int, default=20)
    s = sub.add_parser("postgres")
    for k in ("--town", "--prep", "--params", "--schema", "--pgdata", "--out"):
        s.add_argument(k, required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--postmaster-pid", type=int, required=True)
    s = sub.add_parser("duckdb")
    for k in ("--town", "--prep", "--params", "--db", "--out"):
        s.add_argument(k, required=True)
    s = sub.add_parser("compare")
    s.add_argument("--work", required=True)
    s.add_argument("--params", required=True)
    s = sub.add_parser("report")
    for k in ("--work", "--params", "--prep", "--date", "--machine", "--command", "--hc-version", "--commit"):
        s.add_argument(k, required=True)
    for k in ("--persons", "--seed", "--batch", "--workers"):
        s.add_argument(k, type=int, required=True)
    a = ap.parse_args()
    globals()["cmd_" + a.cmd](a)


if __name__ == "__main__":
    main()
