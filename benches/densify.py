#!/usr/bin/env python3
"""Make a generated town's events denser, for capacity check 1 (docs/capacity.md).

Usage: benches/densify.py IN_EVENTS_CSV OUT_EVENTS_CSV [--factor 7] [--seed 1]

The generated town has ~6.6 events per person-day; the province's figures
(3 billion events a day, 65 million persons) give ~46. Each input event is
kept and joined by FACTOR-1 more signals of the same presence, as more
sources would send them: a time uniform within 60 minutes either side, a
point within ~110 m (so some land in neighbouring level-16 cells) or the
same address, and another source label. Deterministic for a seed. The
input is generated data (`hourcell gen`), and so is the output.
"""
import argparse
import csv
import random
from datetime import datetime, timedelta, timezone

SOURCES = ["access", "utility", "rental", "visit", "wifi", "transit", "parcel"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inp")
    ap.add_argument("out")
    ap.add_argument("--factor", type=int, default=7)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.factor < 1:
        ap.error("--factor must be at least 1")
    rng = random.Random(a.seed)
    n_in = n_out = 0
    with open(a.inp, newline="") as f, open(a.out, "w", newline="") as g:
        r = csv.reader(f)
        w = csv.writer(g, lineterminator="\n")
        header = next(r)
        if header != ["person", "time", "lat", "lng", "address", "source"]:
            raise SystemExit(f"unexpected header: {header}")
        w.writerow(header)
        for person, time, lat, lng, address, source in r:
            n_in += 1
            w.writerow((person, time, lat, lng, address, source))
            t = datetime.strptime(time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
            for _ in range(a.factor - 1):
                ts = t + timedelta(seconds=rng.randint(-3600, 3600))
                src = rng.choice(SOURCES)
                if address:
                    row = (person, ts.strftime("%Y-%m-%dT%H:%M:%SZ"), lat, lng, address, src)
                else:
                    row = (
                        person,
                        ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "%.6f" % (float(lat) + rng.uniform(-0.001, 0.001)),
                        "%.6f" % (float(lng) + rng.uniform(-0.00115, 0.00115)),
                        "",
                        src,
                    )
                w.writerow(row)
            n_out += a.factor
    print(f"{n_in} events in, {n_out} out ({a.factor}x)")


if __name__ == "__main__":
    main()
