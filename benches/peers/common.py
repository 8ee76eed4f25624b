"""What every phase of the peer comparison shares: the query catalogue,
id and cell conversions, S2 coverings, timing (one client and many), the
normal form of each answer, and process memory."""
import datetime as dt
import json
import math
import os
import subprocess
import threading
import time

import s2sphere as s2

EARTH_M = 6371010.0
LEVEL = 16
U64 = 1 << 64
I63 = 1 << 63

# The parameter sets, in report order: (name, kind, label, what the mean
# answer size counts). `kind` is the hourcell query kind; `hourcell bench
# --params` reads it from the params file's "kinds".
QUERIES = [
    ("circle", "who-was-at", "who-was-at, 1 km circle, 24 h", "persons"),
    ("rect", "who-was-at", "who-was-at, ~1 km² rect, 24 h", "persons"),
    ("where", "where-was", "where-was, 1 person, 7 days", "hours"),
    ("occ", "occupancy", "occupancy, 1 address, 24 h", "distinct"),
    ("nas", "no-activity-since", "no-activity-since, 7 days", "persons"),
    ("occ_circle", "occupancy", "occupancy, 1 km circle, 24 h", "distinct"),
    ("occ_area", "occupancy", "occupancy, 4 km × 4 km district, 7 days", "distinct"),
    ("who3k", "who-was-at", "who-was-at, 3 km circle, 7 days", "persons"),
    ("grid", "grid", "grid, level 16 per hour, 2 km × 2 km, 24 h", "cell-hours"),
]
NAMES = [q[0] for q in QUERIES]
KIND = {q[0]: q[1] for q in QUERIES}
LABEL = {q[0]: q[2] for q in QUERIES}
UNIT = {q[0]: q[3] for q in QUERIES}

# Person-level queries carry a purpose and case, and each is audited
# (committed, synced) before it is answered: part of what is measured.
PURPOSE = "comparison benchmark on a generated town"
CASE = "BENCH"


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


def du(path):
    return int(subprocess.check_output(["du", "-sb", path]).split()[0])


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def human(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return ("%.0f %s" if unit == "B" else "%.1f %s") % (n, unit)
        n /= 1024.0


# ----------------------------------------------------------- coverings

def cap_cells(lat, lng, radius_m):
    """Level-16 cells that intersect the circle (S2's exact cell test)."""
    cap = s2.Cap.from_axis_angle(s2.LatLng.from_degrees(lat, lng).to_point(),
                                 s2.Angle.from_radians(radius_m / EARTH_M))
    cov = s2.RegionCoverer()
    cov.min_level = cov.max_level = LEVEL
    cov.max_cells = 1 << 20
    return sorted(signed(c.id()) for c in cov.get_covering(cap) if cap.may_intersect(s2.Cell(c)))


def rect_cells(lat1, lng1, lat2, lng2):
    """Level-16 cells that intersect the rectangle, and how many a
    bounding-box-only test would keep."""
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


# ------------------------------------------------------- answer shapes

def norm_where(hours):
    # [(hour_unix, cells, addresses, sources)] sorted, each list sorted
    return [[h, sorted(c), sorted(a), sorted(s)] for h, c, a, s in sorted(hours)]


def assemble_occ(rows, f, t):
    """(hour or None for the window, distinct) rows -> every hour of the
    window, zeros included, and the window's distinct count."""
    total = 0
    per = {}
    for h, n in rows:
        if h is None:
            total = n
        else:
            per[h] = n
    return {"distinct": total, "hours": [[h * 3600, per.get(h, 0)] for h in range(f // 3600, t // 3600)]}


def assemble_grid(rows):
    """(cell signed, hour, distinct) rows -> [[token, hour unix, distinct]] sorted."""
    return sorted([token(c), h * 3600, n] for c, h, n in rows)


def nas_bounds(x, as_of):
    hs = x["since"] // 3600 * 3600
    he = as_of // 3600 * 3600 + 3600  # the hour containing as_of is seen
    return hs, he


# --------------------------------------------------------------- timing

def timed(fn, params, warm=True):
    """Run fn over the whole parameter list once untimed (warm-up), then timed."""
    if warm:
        for q in params:
            fn(q)
    lat, out = [], []
    t_all = time.perf_counter()
    for q in params:
        t0 = time.perf_counter()
        r = fn(q)
        lat.append((time.perf_counter() - t0) * 1000)
        out.append(r)
    wall = time.perf_counter() - t_all
    return {"p50": pct(lat, 50), "p99": pct(lat, 99), "max": max(lat), "n": len(lat),
            "qps": len(lat) / max(wall, 1e-9)}, out


def requests_for(params, clients):
    """The parameter list repeated to at least two requests per client."""
    n = max(len(params), 2 * clients)
    return [params[i % len(params)] for i in range(n)]


def concurrent(make_fns, name, params, clients):
    """`clients` threads, each with its own connection (`make_fns()` returns
    the query functions bound to a new one) that first sends one request
    untimed (so no figure holds a connection's setup), then all take the
    next request in turn; returns p50/p99/max and queries per second over
    the wall time."""
    reqs = requests_for(params, clients)
    fns = [make_fns() for _ in range(clients)]
    lock = threading.Lock()
    nxt = [0]
    lat = []
    errors = []
    start = threading.Barrier(clients + 1)

    def worker(f):
        mine = []
        try:
            f[name](params[0])
            start.wait()
            while True:
                with lock:
                    i = nxt[0]
                    nxt[0] += 1
                if i >= len(reqs):
                    break
                t0 = time.perf_counter()
                f[name](reqs[i])
                mine.append((time.perf_counter() - t0) * 1000)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))
            start.abort()  # the others stop waiting for this one
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=worker, args=(f,), daemon=True) for f in fns]
    for t in threads:
        t.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for f in fns:
        close = f.get("_close")
        if close:
            close()
    if errors:
        raise RuntimeError("%s at %d clients: %s" % (name, clients, errors[0]))
    return {"clients": clients, "n": len(lat), "p50": pct(lat, 50), "p99": pct(lat, 99), "max": max(lat),
            "qps": len(lat) / max(wall, 1e-9)}


def run_queries(res, P, fns, make_fns=None, clients=(1,), only=None):
    """Every parameter set: warm pass + timed pass on `fns` (one client,
    answers kept), then each client count above 1 through `make_fns`."""
    res.setdefault("latency", {})
    res.setdefault("answers", {})
    res.setdefault("concurrency", {})
    res.setdefault("skipped", {})
    for name in NAMES:
        if only is not None and name not in only:
            continue
        if name not in P or not P[name]:
            continue
        fn = fns.get(name)
        if fn is None:
            res["skipped"][name] = fns.get("_why_not", {}).get(name, "not expressible")
            continue
        t0 = time.time()
        res["latency"][name], res["answers"][name] = timed(fn, P[name])
        l = res["latency"][name]
        figs = [dict(l, clients=1)]
        print("  %-10s p50 %8.2f ms  p99 %8.2f ms  %7.1f q/s (%.0f s)" % (name, l["p50"], l["p99"], l["qps"], time.time() - t0), flush=True)
        if make_fns is not None:
            for c in clients:
                if c == 1:
                    continue
                t0 = time.time()
                f = concurrent(make_fns, name, P[name], c)
                figs.append(f)
                print("  %-10s %2d clients: p50 %8.2f ms  p99 %8.2f ms  %7.1f q/s (%.0f s)" % (
                    name, c, f["p50"], f["p99"], f["qps"], time.time() - t0), flush=True)
        res["concurrency"][name] = figs


# --------------------------------------------------------------- memory

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
