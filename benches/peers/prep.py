"""The peers' event rows and the query parameters.

`prep` is the Python path: it reads `events.csv` and writes each event's
point, UTC hour and level-16 cell for the peers (slow past ~10M events;
`hourcell gen --peers` writes the same rows from the generator). `params`
draws every query's parameter sets and the peers' cell lists."""
import csv
import multiprocessing as mp
import os
import random
import statistics
import time

from common import KIND, NAMES, cap_cells, cell_of, dump, load, parse_ts, rect_cells, signed


def read_addresses(town):
    pts = {}
    with open(os.path.join(town, "addresses.csv"), newline="") as f:
        for row in csv.DictReader(f):
            pts[row["code"]] = (float(row["lat"]), float(row["lng"]))
    return pts


def _prep_chunk(args):
    town, start, end, out, idx = args
    pts = read_addresses(town)
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


# Degrees of latitude and longitude for 1 km near the town's centre
# (30.27 N).
KM_LAT, KM_LNG = 0.009, 0.0104


def cmd_params(a):
    rnd = random.Random(a.seed)
    prep = load(os.path.join(a.prep, "prep.json"))
    pts = read_addresses(a.town)
    codes = sorted(pts)
    start = a.start
    days = a.days
    as_of = start + days * 86400
    persons = prep["persons"]
    used = sorted(c for c, n in prep["addresses"].items() if n > 0)

    def day():
        d = start + rnd.randrange(days) * 86400
        return d, d + 86400

    def week():
        d = start + rnd.randrange(max(1, days - 7 + 1)) * 86400
        return d, d + min(7, days) * 86400

    def centre():
        return pts[rnd.choice(codes)]

    p = {"as_of": as_of, "start": start, "days": days, "kinds": dict(KIND)}
    for name in NAMES:
        p[name] = []
    cover = {}
    t0 = time.time()
    for _ in range(a.n):
        lat, lng = centre()
        f, t = day()
        p["circle"].append({"lat": lat, "lng": lng, "r": 1000.0, "from": f, "to": t, "cells": cap_cells(lat, lng, 1000.0)})
    cover["circle"] = (time.time() - t0) / a.n * 1000
    t0 = time.time()
    loose_extra = 0
    for _ in range(a.n):
        lat, lng = centre()
        dlat, dlng = KM_LAT / 2, KM_LNG / 2  # about 1 km x 1 km
        f, t = day()
        cells, loose = rect_cells(lat - dlat, lng - dlng, lat + dlat, lng + dlng)
        loose_extra += loose - len(cells)
        p["rect"].append({"lat1": lat - dlat, "lng1": lng - dlng, "lat2": lat + dlat, "lng2": lng + dlng,
                          "from": f, "to": t, "cells": cells})
    cover["rect"] = (time.time() - t0) / a.n * 1000
    for _ in range(a.n):
        f, t = week()
        p["where"].append({"person": rnd.choice(persons), "from": f, "to": t})
    for _ in range(a.n):
        f, t = day()
        p["occ"].append({"address": rnd.choice(used), "from": f, "to": t})
    for _ in range(a.nas):
        p["nas"].append({"since": as_of - 7 * 86400})
    # the heavier questions
    t0 = time.time()
    for _ in range(a.heavy):
        lat, lng = centre()
        f, t = day()
        p["occ_circle"].append({"lat": lat, "lng": lng, "r": 1000.0, "from": f, "to": t, "cells": cap_cells(lat, lng, 1000.0)})
    cover["occ_circle"] = (time.time() - t0) / a.heavy * 1000
    t0 = time.time()
    for _ in range(a.heavy):
        lat, lng = centre()
        dlat, dlng = 2 * KM_LAT, 2 * KM_LNG  # about 4 km x 4 km
        f, t = week()
        cells, _ = rect_cells(lat - dlat, lng - dlng, lat + dlat, lng + dlng)
        p["occ_area"].append({"lat1": lat - dlat, "lng1": lng - dlng, "lat2": lat + dlat, "lng2": lng + dlng,
                              "from": f, "to": t, "cells": cells})
    cover["occ_area"] = (time.time() - t0) / a.heavy * 1000
    t0 = time.time()
    for _ in range(a.heavy):
        lat, lng = centre()
        f, t = week()
        p["who3k"].append({"lat": lat, "lng": lng, "r": 3000.0, "from": f, "to": t, "cells": cap_cells(lat, lng, 3000.0)})
    cover["who3k"] = (time.time() - t0) / a.heavy * 1000
    t0 = time.time()
    for _ in range(a.heavy):
        lat, lng = centre()
        dlat, dlng = KM_LAT, KM_LNG  # about 2 km x 2 km
        f, t = day()
        cells, _ = rect_cells(lat - dlat, lng - dlng, lat + dlat, lng + dlng)
        p["grid"].append({"lat1": lat - dlat, "lng1": lng - dlng, "lat2": lat + dlat, "lng2": lng + dlng,
                          "from": f, "to": t, "level": 16, "hourly": True, "cells": cells})
    cover["grid"] = (time.time() - t0) / a.heavy * 1000
    p["cover_ms"] = cover
    p["rect_bbox_only_extra_cells"] = loose_extra
    dump(a.out, p)
    print("params: %d light and %d heavy sets each; mean cells: %s; covering in python (ms): %s; "
          "bounding-box-only test would add %d cells over all 1 km rects" % (
              a.n, a.heavy,
              ", ".join("%s %.0f" % (k, statistics.mean(len(x["cells"]) for x in p[k])) for k in cover),
              ", ".join("%s %.1f" % kv for kv in cover.items()), loose_extra))
