#!/usr/bin/env python3
"""hourcell vs PostgreSQL+PostGIS vs DuckDB vs SedonaDB on the same generated town.

Driven by run.sh, which installs things, starts/stops the servers and calls
the subcommands below in order. Each phase writes a JSON file in the work
directory; `compare` checks that every system gives identical answers and
`report` prints the markdown section. The phases live in their own modules:
prep.py (rows and parameters), sys_hourcell.py, sys_postgres.py,
sys_duckdb.py, sys_sedona.py, report.py; common.py holds what they share.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import prep  # noqa: E402
import report  # noqa: E402


def clients(s):
    return [int(x) for x in s.split(",") if x]


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
    s.add_argument("--heavy", type=int, default=20, help="parameter sets of each heavy query")
    s.add_argument("--start", type=int, required=True)
    s.add_argument("--days", type=int, required=True)
    s.add_argument("--out", required=True)
    s = sub.add_parser("hourcell")
    for k in ("--bin", "--town", "--params", "--listen", "--data", "--gen", "--out"):
        s.add_argument(k, required=True)
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--batch", type=int, default=20000)
    s.add_argument("--cli-checks", type=int, default=5)
    s.add_argument("--clients", type=clients, default=[1])
    s = sub.add_parser("rust", help="hourcell bench --params against the running node")
    for k in ("--bin", "--params", "--listen", "--out"):
        s.add_argument(k, required=True)
    s.add_argument("--clients", type=clients, default=[1])
    s = sub.add_parser("floor")
    for k in ("--params", "--gen", "--listen", "--data"):
        s.add_argument(k, required=True)
    s.add_argument("--rounds", type=int, default=20)
    s = sub.add_parser("postgres")
    for k in ("--town", "--prep", "--params", "--schema", "--pgdata", "--out"):
        s.add_argument(k, required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--postmaster-pid", type=int, required=True)
    s.add_argument("--clients", type=clients, default=[1])
    s = sub.add_parser("duckdb")
    for k in ("--town", "--prep", "--params", "--db", "--out"):
        s.add_argument(k, required=True)
    s.add_argument("--clients", type=clients, default=[1])
    s = sub.add_parser("sedona")
    for k in ("--town", "--prep", "--params", "--out"):
        s.add_argument(k, required=True)
    s.add_argument("--clients", type=clients, default=[1])
    s = sub.add_parser("compare")
    s.add_argument("--work", required=True)
    s.add_argument("--params", required=True)
    s = sub.add_parser("report")
    for k in ("--work", "--params", "--prep", "--date", "--machine", "--command", "--hc-version", "--hc-build",
              "--commit", "--prep-how"):
        s.add_argument(k, required=True)
    for k in ("--persons", "--seed", "--batch"):
        s.add_argument(k, type=int, required=True)
    s = sub.add_parser("summary")
    for k in ("--work", "--params", "--prep", "--out"):
        s.add_argument(k, required=True)
    s.add_argument("--persons", type=int, required=True)
    s = sub.add_parser("scales")
    s.add_argument("summaries", nargs="+")
    a = ap.parse_args()

    if a.cmd in ("hourcell", "rust", "floor"):
        import sys_hourcell as m
    elif a.cmd == "postgres":
        import sys_postgres as m
    elif a.cmd == "duckdb":
        import sys_duckdb as m
    elif a.cmd == "sedona":
        import sys_sedona as m
    elif a.cmd in ("prep", "params"):
        m = prep
    else:
        m = report
    getattr(m, "cmd_" + a.cmd)(a)


if __name__ == "__main__":
    main()
