"""Who was at a place, how many people were there hour by hour, and the
heat map around it.

    python3 proto/python/example.py --server 127.0.0.1:7420 \
        --addresses H1 --start 1793491200 --end 1793577600 \
        --purpose "unregistered residence check" --case C-17

Against `hourcell dev` (which serves every role to anonymous callers on
loopback) no token is needed; elsewhere pass --token (or HOURCELL_TOKEN).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hourcell_client as hc  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default=os.environ.get("HOURCELL_SERVER", "127.0.0.1:7420"))
    p.add_argument("--token", default=os.environ.get("HOURCELL_TOKEN"))
    p.add_argument("--addresses", required=True, help="comma-separated address codes")
    p.add_argument("--start", type=int, required=True, help="unix seconds")
    p.add_argument("--end", type=int, required=True, help="unix seconds")
    p.add_argument("--as-of", type=int)
    p.add_argument("--purpose", required=True)
    p.add_argument("--case", required=True)
    p.add_argument("--grid-circle", help="LAT,LNG,METRES: also print the heat map of this circle")
    a = p.parse_args()
    ch = hc.connect(a.server, token=a.token)
    where = {"addresses": a.addresses.split(",")}
    persons = hc.who_was_at(ch, a.start, a.end, a.purpose, a.case, as_of=a.as_of, **where)
    print("who-was-at: %d persons: %s" % (len(persons), " ".join(map(str, persons))))
    try:
        df = hc.occupancy_frame(ch, a.start, a.end, as_of=a.as_of, **where)
    except ImportError:
        print("occupancy: pandas is not installed (pip install pandas)")
        return
    busy = df[df["distinct"].fillna(0) > 0]
    print("occupancy: %d hours, %d with someone, peak %s" % (len(df), len(busy), df["distinct"].max()))
    print(busy.to_string(index=False))
    if a.grid_circle:
        # The heat map of a circle (the grid takes no address list), per
        # hour, as a DataFrame.
        lat, lng, m = (float(x) for x in a.grid_circle.split(","))
        grid = hc.grid_frame(ch, a.start, a.end, level=14, hourly=True, as_of=a.as_of,
                             circle=(lat, lng, m))
        print("grid: %d cell-hours, %d cells, peak %s"
              % (len(grid), grid["cell"].nunique(), grid["distinct"].max()))


if __name__ == "__main__":
    main()
