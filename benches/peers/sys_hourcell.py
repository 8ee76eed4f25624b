"""hourcell through gRPC from Python: import (timed), Admin.Compact, every
query set at each client count (one channel per client), the CLI's JSON
checked against gRPC, and the latency floor (`peers.py floor`)."""
import json
import os
import random
import subprocess
import sys
import time

from common import (CASE, PURPOSE, du, dump, iso, load, loadavg, norm_where, parse_ts, pct, proc_status,
                    run_queries)


def grpc_stubs(gen_dir):
    sys.path.insert(0, gen_dir)
    import grpc  # noqa
    from hourcell.v1 import hourcell_pb2 as pb, hourcell_pb2_grpc as rpc  # noqa
    return grpc, pb, rpc


def channel(grpc, listen):
    return grpc.insecure_channel(listen, options=[("grpc.max_receive_message_length", 256 << 20)])


def hourcell_queries(pb, q, as_of):
    """Every parameter set's query as a call on a QueryStub `q`, by set name."""
    def win(f, t):
        return pb.Window(start=f, end=t, as_of=as_of)

    def region(x):
        if "r" in x:
            return pb.Region(circle=pb.Circle(lat=x["lat"], lng=x["lng"], radius_m=x["r"]))
        if "lat1" in x:
            return pb.Region(rect=pb.Rect(lat_lo=x["lat1"], lng_lo=x["lng1"], lat_hi=x["lat2"], lng_hi=x["lng2"]))
        return pb.Region(addresses=pb.AddressList(codes=[x["address"]]))

    def who(x):
        ps = []
        for m in q.WhoWasAt(pb.WhoWasAtRequest(region=region(x), window=win(x["from"], x["to"]), purpose=PURPOSE, case_ref=CASE)):
            ps.extend(m.persons)
        return ps

    def where(x):
        r = q.WhereWas(pb.WhereWasRequest(person=x["person"], window=win(x["from"], x["to"]), purpose=PURPOSE, case_ref=CASE))
        return norm_where([(h.hour, list(h.cells), list(h.addresses), list(h.sources)) for h in r.hours])

    def occ(x):
        r = q.Occupancy(pb.OccupancyRequest(region=region(x), window=win(x["from"], x["to"])))
        return {"distinct": r.distinct, "hours": [[h.hour, h.distinct] for h in r.hours]}

    def nas(x):
        out = []
        for m in q.NoActivitySince(pb.NoActivitySinceRequest(since=x["since"], as_of=as_of, purpose=PURPOSE, case_ref=CASE)):
            out.extend([p.person, p.last_seen if p.HasField("last_seen") else None] for p in m.persons)
        return out

    def grid(x):
        r = q.OccupancyGrid(pb.OccupancyGridRequest(region=region(x), window=win(x["from"], x["to"]),
                                                    level=x["level"], hourly=x["hourly"]))
        return sorted([c.token, c.hour, c.distinct] for c in r.cells)

    return {"circle": who, "rect": who, "where": where, "occ": occ, "nas": nas,
            "occ_circle": occ, "occ_area": occ, "who3k": who, "grid": grid}


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
    ch = channel(grpc, a.listen)
    admin = rpc.AdminStub(ch)
    t0 = time.time()
    cr = admin.Compact(pb.CompactRequest(), timeout=3600)
    res["compact_s"] = time.time() - t0
    res["disk_after_compact"] = du(a.data)
    res["compact_rpc"] = {"before": cr.disk_bytes_before, "after": cr.disk_bytes_after}
    q = rpc.QueryStub(ch)
    res["loadavg_queries"] = loadavg()

    def make_fns():
        c = channel(grpc, a.listen)
        fns = hourcell_queries(pb, rpc.QueryStub(c), as_of)
        fns["_close"] = c.close
        return fns

    fns = hourcell_queries(pb, q, as_of)
    run_queries(res, P, fns, make_fns, a.clients)
    res["cli_mismatches"] = cli_checks(a, P, res, hc, server, as_of)
    res["mem_peak"] = proc_status(a.pid, "VmHWM")
    dump(a.out, res)
    print("hourcell: disk %d -> %d bytes after compact, VmHWM %d" % (res["disk_after_load"], res["disk_after_compact"], res["mem_peak"]))


def cli_checks(a, P, res, hc, server, as_of):
    """The CLI's JSON must say the same as gRPC (first few parameters)."""
    def cli(*args):
        extra = [] if args[0] in ("occupancy", "grid") else ["--purpose", PURPOSE, "--case", CASE]
        out = subprocess.run([hc, "query", *args, *extra, "--as-of", iso(as_of), "--format", "json", "--server", server],
                             check=True, capture_output=True, text=True).stdout
        # person ids are strings in the CLI's JSON (proto3 JSON mapping)
        return json.loads(out, object_hook=lambda o: {k: ([int(p) for p in v] if k == "persons" and v and isinstance(v[0], str) else int(v) if k == "person" else v) for k, v in o.items()})

    ans = res["answers"]
    bad = []
    for i in range(min(a.cli_checks, len(P["circle"]))):
        x = P["circle"][i]
        j = cli("who-was-at", "--circle", "%r,%r,%r" % (x["lat"], x["lng"], x["r"]), "--from", iso(x["from"]), "--to", iso(x["to"]))
        if j["persons"] != ans["circle"][i]:
            bad.append(("circle", i))
        x = P["rect"][i]
        j = cli("who-was-at", "--rect", "%r,%r,%r,%r" % (x["lat1"], x["lng1"], x["lat2"], x["lng2"]), "--from", iso(x["from"]), "--to", iso(x["to"]))
        if j["persons"] != ans["rect"][i]:
            bad.append(("rect", i))
        x = P["where"][i]
        j = cli("where-was", "--person", str(x["person"]), "--from", iso(x["from"]), "--to", iso(x["to"]))
        got = norm_where([(parse_ts(h["hour"]), h["cells"], h["addresses"], h["sources"]) for h in j["hours"]])
        if got != ans["where"][i]:
            bad.append(("where", i))
        x = P["occ"][i]
        j = cli("occupancy", "--addresses", x["address"], "--from", iso(x["from"]), "--to", iso(x["to"]))
        got = {"distinct": j["distinct"], "hours": [[parse_ts(h["hour"]), h["distinct"]] for h in j["hours"]]}
        if got != ans["occ"][i]:
            bad.append(("occ", i))
    for i in range(min(a.cli_checks, len(P.get("occ_area", [])))):
        x = P["occ_area"][i]
        j = cli("occupancy", "--rect", "%r,%r,%r,%r" % (x["lat1"], x["lng1"], x["lat2"], x["lng2"]), "--from", iso(x["from"]), "--to", iso(x["to"]))
        got = {"distinct": j["distinct"], "hours": [[parse_ts(h["hour"]), h["distinct"]] for h in j["hours"]]}
        if got != ans["occ_area"][i]:
            bad.append(("occ_area", i))
    if P["nas"]:
        j = cli("no-activity-since", "--since", iso(P["nas"][0]["since"]))
        got = [[p["person"], parse_ts(p["last_seen"]) if p["last_seen"] else None] for p in j["persons"]]
        if got != ans["nas"][0]:
            bad.append(("nas", 0))
    if bad:
        print("hourcell: CLI JSON and gRPC disagree: %s" % bad, file=sys.stderr)
    return bad


def cmd_rust(a):
    """`hourcell bench --params` against the node: the same parameter sets
    from Rust, each at every client count; its JSON, with the load average,
    becomes result_hourcell_rust.json."""
    la = loadavg()
    cmd = [a.bin, "bench", "--server", "http://" + a.listen, "--params", a.params, "--queries", "0",
           "--clients", ",".join(str(c) for c in a.clients), "--purpose", PURPOSE, "--case", CASE,
           "--json-out", a.out + ".raw"]
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    raw = load(a.out + ".raw")
    os.remove(a.out + ".raw")
    res = {"system": "hourcell-rust", "loadavg": la, "seconds": time.time() - t0, "version": raw["version"],
           "concurrency": {}, "latency": {}, "mean_size": {}}
    for name, s in raw["sets"].items():
        figs = [{"clients": f["clients"], "n": f["n"], "p50": f["p50_ms"], "p99": f["p99_ms"], "max": f["max_ms"],
                 "qps": f["qps"]} for f in s["figures"]]
        res["concurrency"][name] = figs
        one = [f for f in figs if f["clients"] == 1]
        if one:
            res["latency"][name] = one[0]
        res["mean_size"][name] = s["figures"][0]["mean_size"] if s["figures"] else None
    dump(a.out, res)


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
    q = rpc.QueryStub(channel(grpc, a.listen))
    fns = hourcell_queries(pb, q, P["as_of"])
    who, where, occ = fns["circle"], fns["where"], fns["occ"]

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
