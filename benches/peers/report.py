"""`compare` checks that every system gave the same answers; `report`
prints the markdown section (tables per query and per client count, the
issue's goals met or not with their ratios); `summary` and `scales` carry
one run's figures to a table of how they grow with the data."""
import json
import os
import statistics
import sys

from common import LABEL, NAMES, UNIT, dump, human, load

PEERS = ("postgres", "duckdb", "sedonadb")
TITLE = {"hourcell-rust": "hourcell, Rust client", "hourcell": "hourcell, Python client",
         "postgres": "PostgreSQL + PostGIS", "duckdb": "DuckDB", "sedonadb": "SedonaDB"}


def results(work):
    R = {}
    for name, f in (("hourcell", "hourcell"), ("hourcell-rust", "hourcell_rust"), ("postgres", "postgres"),
                    ("duckdb", "duckdb"), ("sedonadb", "sedonadb")):
        p = os.path.join(work, "result_%s.json" % f)
        if os.path.exists(p):
            R[name] = load(p)
    return R


def size_of(q, x):
    if isinstance(x, dict):
        return x["distinct"]
    return len(x)


def diff(h, o):
    if isinstance(h, list) and h and not isinstance(h[0], list):
        hs, os_ = set(h), set(o)
        return {"only_hourcell": sorted(hs - os_)[:10], "only_peer": sorted(os_ - hs)[:10], "n_hourcell": len(hs), "n_peer": len(os_)}
    return {"hourcell": str(h)[:300], "peer": str(o)[:300]}


def cmd_compare(a):
    R = results(a.work)
    P = load(a.params)
    bad = []
    checked = 0
    names = [q for q in NAMES if R["hourcell"]["answers"].get(q) is not None]
    for q in names:
        for i in range(len(P[q])):
            h = R["hourcell"]["answers"][q][i]
            for peer in PEERS:
                if peer not in R or q not in R[peer].get("answers", {}):
                    continue
                checked += 1
                o = R[peer]["answers"][q][i]
                if o != h:
                    bad.append({"query": q, "i": i, "peer": peer, "param": {k: v for k, v in P[q][i].items() if k != "cells"},
                                "detail": diff(h, o)})
    sizes = {q: statistics.mean(size_of(q, x) for x in R["hourcell"]["answers"][q]) for q in names}
    # The Rust client reads the same node: its mean answer sizes must agree.
    rust = R.get("hourcell-rust", {}).get("mean_size", {})
    for q, s in rust.items():
        if q in sizes and q != "grid" and abs(s - sizes[q]) > 1e-6 * max(1.0, sizes[q]):
            bad.append({"query": q, "peer": "hourcell-rust", "detail": {"mean_size_python": sizes[q], "mean_size_rust": s}})
    dump(os.path.join(a.work, "compare.json"), {"mismatches": bad, "mean_answer_size": sizes, "checked": checked,
                                                "systems": sorted(R)})
    if bad:
        for b in bad[:20]:
            print("MISMATCH", json.dumps(b)[:600], file=sys.stderr)
        print("compare: %d MISMATCHES (see %s/compare.json)" % (len(bad), a.work), file=sys.stderr)
        sys.exit(1)
    print("compare: %d answers identical across %s (mean sizes %s)" % (
        checked, ", ".join(sorted(R)), ", ".join("%s %.0f" % kv for kv in sizes.items())))


def faster(peer, mine):
    if not peer or not mine:
        return "–"
    r = peer / mine
    return "%.1f× faster" % r if r >= 1 else "%.1f× slower" % (1 / r)


def ms(x):
    if x is None:
        return "–"
    return "%.2f ms" % x if x < 100 else "%.0f ms" % x


def ok(b):
    return "met" if b else "**not met**"


def lat(R, k, q, p):
    try:
        return R[k]["latency"][q][p]
    except KeyError:
        return None


def goals(R, persons):
    """The issue's goals (p99, one client, this run): (text, met, ratio)."""
    out = []
    hr = "hourcell-rust" if "hourcell-rust" in R else "hourcell"

    def ratio(peer, q, me=hr):
        a, b = lat(R, peer, q, "p99"), lat(R, me, q, "p99")
        return (a / b) if a and b else None

    for q in ("occ_circle", "occ_area"):
        for peer, need in (("postgres", 50), ("duckdb", 10)):
            r = ratio(peer, q)
            rp = ratio(peer, q, "hourcell")
            out.append(("%s ≥ %d× faster than %s" % (LABEL[q], need, TITLE[peer]), r is not None and r >= need, r, rp))
    r = ratio("postgres", "who3k")
    out.append(("%s ≥ 20× faster than PostgreSQL + PostGIS" % LABEL["who3k"], r is not None and r >= 20, r,
                ratio("postgres", "who3k", "hourcell")))
    r = ratio("postgres", "nas")
    out.append(("no-activity-since ≥ 20× faster than PostgreSQL + PostGIS (the goal is stated at 1M persons; "
                "this run has %s)" % "{:,}".format(persons), r is not None and r >= 20, r, ratio("postgres", "nas", "hourcell")))
    for q in ("where", "occ"):
        r = ratio("postgres", q)
        # within 1.5x: hourcell's p99 at most 1.5 times PostGIS's, i.e. ratio >= 1/1.5
        out.append(("%s within 1.5× of PostgreSQL + PostGIS from the Rust client" % LABEL[q],
                    r is not None and r >= 1 / 1.5, r, ratio("postgres", q, "hourcell")))
    return out


def cmd_report(a):
    R = results(a.work)
    P = load(a.params)
    C = load(os.path.join(a.work, "compare.json"))
    prep = load(os.path.join(a.prep, "prep.json"))
    ev = prep["events"]
    systems = [s for s in ("hourcell-rust", "hourcell", "postgres", "duckdb", "sedonadb") if s in R]
    h, pg, dk = R["hourcell"], R["postgres"], R["duckdb"]
    sd = R.get("sedonadb")
    hr = "hourcell-rust" if "hourcell-rust" in R else "hourcell"
    names = [q for q in NAMES if q in h["latency"]]
    lines = []
    w = lines.append

    w("### %s: %s persons × %d days, %s events" % (a.date, "{:,}".format(a.persons), P["days"], "{:,}".format(ev)))
    w("")
    w("Machine: %s (other work on it, if any, is said beside this table). Command: `%s`. %s (%s build, repository at %s); "
      "%s; PostGIS %s; DuckDB %s (Python, %s threads)%s. 1-minute load average before each system's queries: %s "
      "(the harness and the system under test share the cores)." % (
          a.machine, a.command, a.hc_version, a.hc_build, a.commit, pg["version"].split(" on ")[0], pg["postgis"],
          dk["version"], dk["threads"], "; SedonaDB %s (Python)" % sd["version"] if sd else "",
          ", ".join("%s %s" % (TITLE[s], R[s].get("loadavg_queries", R[s].get("loadavg"))) for s in systems)))
    w("")
    w("Answers were checked identical across hourcell, %s for every parameter set below (%d comparisons, %s); "
      "the Rust client's mean answer sizes match the Python client's.%s" % (
          ", ".join(TITLE[p] for p in PEERS if p in R), C["checked"],
          "no mismatch" if not C["mismatches"] else "%d MISMATCHES" % len(C["mismatches"]),
          (" SedonaDB skipped: %s." % ", ".join("%s (%s)" % kv for kv in sd["skipped"].items())) if sd and sd.get("skipped") else ""))
    w("")
    w("One client, p50 and p99 (hourcell's ratios from the Rust client; the Python client's in brackets):")
    w("")
    head = "| query | " + " | ".join(TITLE[s] for s in systems) + " | hourcell vs PostGIS | hourcell vs DuckDB |"
    w(head)
    w("|---|" + "---:|" * len(systems) + "---|---|")
    rate = {s: ev / R[s]["load"]["events_s"] for s in systems if "load" in R[s]}
    w("| load, events/s | " + " | ".join("{:,.0f}".format(rate[s]) if s in rate else "(same node)" for s in systems) +
      " | %.1f× | %.1f× |" % (rate["hourcell"] / rate["postgres"], rate["hourcell"] / rate["duckdb"]))
    sizes = C["mean_answer_size"]
    for q in names:
        for p in ("p50", "p99"):
            hv, hp = lat(R, hr, q, p), lat(R, "hourcell", q, p)
            pv, dv = lat(R, "postgres", q, p), lat(R, "duckdb", q, p)
            w("| %s (mean answer %.0f %s), %s | %s | %s (%s) | %s (%s) |" % (
                LABEL[q], sizes.get(q, 0), UNIT[q], p, " | ".join(ms(lat(R, s, q, p)) for s in systems),
                faster(pv, hv), faster(pv, hp), faster(dv, hv), faster(dv, hp)))
    disk = {"hourcell": h["disk_after_compact"], "postgres": pg["disk"], "duckdb": dk["disk"]}
    w("| disk footprint | " + " | ".join(human(disk[s]) if disk.get(s) else ("(same node)" if s == "hourcell-rust" else "in memory")
                                         for s in systems) +
      " | %.2f of it | %.2f of it |" % (disk["hourcell"] / disk["postgres"], disk["hourcell"] / disk["duckdb"]))
    mem = {s: R[s].get("mem_peak") for s in systems}
    w("| peak memory | " + " | ".join(human(mem[s]) if mem.get(s) else "(same node)" for s in systems) +
      " | %.2f of it | %.2f of it |" % (mem["hourcell"] / mem["postgres"], mem["hourcell"] / mem["duckdb"]))
    w("")

    w("Concurrency: queries per second (p99) at each client count; the parameter list repeated to at least two "
      "requests per client, each client on its own connection (PostgreSQL: one connection each; DuckDB: one cursor each; "
      "hourcell from Python: one gRPC channel per thread; from Rust: one channel per task; SedonaDB: one shared context):")
    w("")
    w("| query | clients | " + " | ".join(TITLE[s] for s in systems) + " |")
    w("|---|---:|" + "---:|" * len(systems))
    for q in names:
        counts = sorted({f["clients"] for s in systems for f in R[s].get("concurrency", {}).get(q, [])})
        for c in counts:
            cells = []
            for s in systems:
                f = [x for x in R[s].get("concurrency", {}).get(q, []) if x["clients"] == c]
                cells.append("%s (%s)" % ("{:,.0f}".format(f[0]["qps"]) if f[0]["qps"] >= 10 else "%.1f" % f[0]["qps"],
                                          ms(f[0]["p99"])) if f else "–")
            w("| %s | %d | %s |" % (LABEL[q] if c == counts[0] else "", c, " | ".join(cells)))
    w("")

    w("Goals of issue 19 (p99, one client, this run; ratio = peer's p99 / hourcell's, Rust client, Python client in brackets):")
    w("")
    for text, met, r, rp in goals(R, a.persons):
        w("- %s: %s (%s; Python client %s)." % (text, ok(met), "%.2f×" % r if r else "no figure", "%.2f×" % rp if rp else "–"))
    w("")

    pst = pg["load"]["steps"]
    dst = dk["load"]["steps"]
    w("Details:")
    w("")
    w("- **Load.** hourcell: `hourcell import --kind events --batch %d` over gRPC (3 batches in flight), every batch synced before it is acknowledged: %.1f s "
      "(addresses and registry before it: %.1f s). PostgreSQL: `COPY ... FREEZE` %.1f s + index builds %.1f s + `VACUUM ANALYZE` %.1f s "
      "(a `CHECKPOINT` after it took %.1f s more, not counted). DuckDB: `CREATE TABLE AS SELECT ... ORDER BY hour, cell` %.1f s + `CHECKPOINT` %.1f s.%s "
      "The peers load rows in which each event's point, hour and S2 level-16 cell are already computed (%s, %.1f s, not counted); "
      "hourcell computes those itself during ingest." % (
          a.batch, h["load"]["events_s"], h["load"]["other_s"], pst["copy events"], pst["create indexes"], pst["vacuum analyze"],
          pst["checkpoint"], dst["load events (sorted)"], dst["checkpoint"],
          (" SedonaDB: the CSV read into an in-memory table sorted by (hour, cell) %.1f s (nothing on disk)." % sd["load"]["events_s"]) if sd else "",
          a.prep_how, prep["seconds"]))
    cov = P["cover_ms"]
    w("- **Queries.** %d parameter sets for each light query, %d for each heavy one (seed %d: centres at random address points, "
      "random persons with events, random addresses with events, random whole days or 7-day windows); no-activity-since is one "
      "query (since = as_of − 7 days) repeated %d times. One untimed pass, then one timed pass (p99 of %d samples is close to their "
      "maximum). The peers get each region's level-16 cell list computed beforehand, outside the timing (s2sphere, ms per region: %s); "
      "hourcell's times include its own covering. hourcell after `Admin.Compact`; the Rust client is `hourcell bench --params` "
      "on the same node right after the Python client." % (
          len(P["circle"]), len(P.get("who3k", [])), a.seed, len(P["nas"]), len(P.get("who3k", [])),
          ", ".join("%s %.1f" % kv for kv in cov.items())))
    rel = pg["relations"]
    w("- **Disk.** hourcell: `du -sb` of the data directory after `Admin.Compact` (%s right after the load). PostgreSQL: "
      "tables with their indexes (events heap %s, GiST on geom %s, (cell, hour) %s, (address, hour) %s, (person, ts) %s; the data "
      "directory without WAL %s). DuckDB: the database file after `CHECKPOINT`." % (
          human(h["disk_after_load"]), human(rel.get("events", 0)), human(rel.get("events_geom", 0)), human(rel.get("events_cell_hour", 0)),
          human(rel.get("events_address_hour", 0)), human(rel.get("events_person_ts", 0)), human(pg["disk_datadir_minus_wal"])))
    w("- **Memory.** hourcell: VmHWM of the node (block cache 1 GiB). PostgreSQL (shared_buffers 1 GiB): peak summed PSS of the "
      "postmaster and its children (largest single VmHWM %s). DuckDB and SedonaDB: VmHWM of the Python process that loaded and queried it." % (
          human(pg["mem_max_single_hwm"])))
    print("\n".join(lines))


def cmd_summary(a):
    """The figures `scales` compares, from one run's work directory."""
    R = results(a.work)
    prep = load(os.path.join(a.prep, "prep.json"))
    P = load(a.params)
    out = {"persons": a.persons, "days": P["days"], "events": prep["events"], "systems": {}}
    for s, r in R.items():
        d = {"latency": r.get("latency", {}), "loadavg": r.get("loadavg_queries", r.get("loadavg"))}
        if "load" in r:
            d["events_per_s"] = prep["events"] / r["load"]["events_s"]
        d["disk"] = r.get("disk_after_compact", r.get("disk"))
        out["systems"][s] = d
    dump(a.out, out)


def cmd_scales(a):
    """A markdown table of p50/p99, load rate and disk at each scale."""
    S = sorted((load(p) for p in a.summaries), key=lambda s: s["events"])
    w = print
    heads = ["%s × %d d (%s events)" % ("{:,}".format(s["persons"]), s["days"], "{:,}".format(s["events"])) for s in S]
    w("| system | figure | " + " | ".join(heads) + " | growth, last / first |")
    w("|---|---|" + "---:|" * len(S) + "---:|")
    systems = [x for x in ("hourcell-rust", "hourcell", "postgres", "duckdb", "sedonadb") if all(x in s["systems"] for s in S)]
    for sy in systems:
        rows = []
        if all(s["systems"][sy].get("events_per_s") for s in S):
            v = [s["systems"][sy]["events_per_s"] for s in S]
            rows.append(("load, events/s", ["{:,.0f}".format(x) for x in v], v[-1] / v[0]))
        if all(s["systems"][sy].get("disk") for s in S):
            v = [s["systems"][sy]["disk"] for s in S]
            rows.append(("disk", [human(x) for x in v], v[-1] / v[0]))
        for q in NAMES:
            for p in ("p50", "p99"):
                v = [s["systems"][sy]["latency"].get(q, {}).get(p) for s in S]
                if all(x is not None for x in v):
                    rows.append(("%s %s" % (LABEL[q], p), [ms(x) for x in v], v[-1] / v[0]))
        for i, (fig, vals, g) in enumerate(rows):
            w("| %s | %s | %s | %.1f× |" % (TITLE[sy] if i == 0 else "", fig, " | ".join(vals), g))
