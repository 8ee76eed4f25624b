"""A small Python client for hourcell's gRPC API (hourcell.v1).

Stubs are generated from the repository's proto on first use (grpcio-tools),
into a cache folder, so nothing generated is committed. Helpers:

- connect(server, token=None): a channel (plaintext, or TLS with ca=...) whose
  calls carry the bearer token;
- who_was_at(...): the person ids in a region over a window, with the purpose
  and case every person-level query states (both are audited first);
- occupancy_frame(...): distinct persons per hour as a pandas DataFrame.
- grid_frame(...): the occupancy grid (heat map) as a pandas DataFrame.

Person ids are 64-bit integers; Python keeps them exact (JavaScript would not).
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.dirname(HERE)  # the repository's proto/ folder
PROTO = os.path.join("hourcell", "v1", "hourcell.proto")


def stubs(cache=None):
    """(grpc, pb, rpc): the grpc module and the generated hourcell.v1 modules."""
    cache = cache or os.environ.get("HOURCELL_PY_STUBS") or os.path.join(HERE, ".stubs")
    out = os.path.join(cache, "hourcell", "v1", "hourcell_pb2.py")
    src = os.path.join(PROTO_ROOT, PROTO)
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
        from grpc_tools import protoc
        import importlib.resources
        os.makedirs(cache, exist_ok=True)
        well_known = str(importlib.resources.files("grpc_tools") / "_proto")
        code = protoc.main(["protoc", "-I" + PROTO_ROOT, "-I" + well_known,
                            "--python_out=" + cache, "--grpc_python_out=" + cache, src])
        if code != 0:
            raise RuntimeError("protoc failed on %s (exit %d)" % (src, code))
    if cache not in sys.path:
        sys.path.insert(0, cache)
    import grpc
    from hourcell.v1 import hourcell_pb2 as pb, hourcell_pb2_grpc as rpc
    return grpc, pb, rpc


def connect(server="127.0.0.1:7420", token=None, ca=None):
    """A channel to `server` (host:port). With `ca` (a PEM file), TLS."""
    grpc, _, _ = stubs()
    if ca:
        with open(ca, "rb") as f:
            ch = grpc.secure_channel(server, grpc.ssl_channel_credentials(f.read()))
    else:
        ch = grpc.insecure_channel(server)
    if token:
        import collections

        class Details(collections.namedtuple("D", "method timeout metadata credentials wait_for_ready compression"),
                      grpc.ClientCallDetails):
            pass

        class Interceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
            def _d(self, d):
                md = list(d.metadata or []) + [("authorization", "Bearer " + token)]
                return Details(d.method, d.timeout, md, d.credentials, d.wait_for_ready, d.compression)

            def intercept_unary_unary(self, cont, d, req):
                return cont(self._d(d), req)

            def intercept_unary_stream(self, cont, d, req):
                return cont(self._d(d), req)

        ch = grpc.intercept_channel(ch, Interceptor())
    return ch


def region(pb, circle=None, rect=None, area=None, addresses=None, polygon=None):
    """A Region: circle=(lat, lng, metres), rect=(lat1, lng1, lat2, lng2),
    area="A007", addresses=["H1", ...] or polygon= a GeoJSON Polygon or
    MultiPolygon geometry as a dict (positions [lng, lat], holes allowed)."""
    if polygon:
        kind = polygon.get("type")
        if kind == "Polygon":
            polys = [polygon["coordinates"]]
        elif kind == "MultiPolygon":
            polys = polygon["coordinates"]
        else:
            raise ValueError("polygon must be a GeoJSON Polygon or MultiPolygon geometry")
        return pb.Region(multipolygon=pb.MultiPolygon(polygons=[
            pb.Polygon(rings=[pb.Ring(points=[pb.LatLng(lat=p[1], lng=p[0]) for p in ring])
                              for ring in rings])
            for rings in polys]))
    if circle:
        lat, lng, r = circle
        return pb.Region(circle=pb.Circle(lat=lat, lng=lng, radius_m=r))
    if rect:
        a, b, c, d = rect
        return pb.Region(rect=pb.Rect(lat_lo=min(a, c), lng_lo=min(b, d), lat_hi=max(a, c), lng_hi=max(b, d)))
    if area:
        return pb.Region(area=area)
    if addresses:
        return pb.Region(addresses=pb.AddressList(codes=list(addresses)))
    raise ValueError("a region needs circle, rect, area, addresses or polygon")


def who_was_at(channel, start, end, purpose, case, as_of=None, **where):
    """Sorted person ids (ints) in the region over [start, end) (unix
    seconds). Person-level: `purpose` and `case` are required and audited."""
    _, pb, rpc = stubs()
    q = rpc.QueryStub(channel)
    req = pb.WhoWasAtRequest(region=region(pb, **where),
                             window=pb.Window(start=start, end=end, as_of=as_of),
                             purpose=purpose, case_ref=case)
    persons = []
    for part in q.WhoWasAt(req):
        persons.extend(part.persons)
    return sorted(persons)


def occupancy_frame(channel, start, end, as_of=None, **where):
    """Distinct persons per hour over [start, end) as a pandas DataFrame
    (columns hour (UTC), distinct, suppressed). An analyst's counts below
    the suppression threshold come back as missing values."""
    import pandas as pd
    _, pb, rpc = stubs()
    q = rpc.QueryStub(channel)
    r = q.Occupancy(pb.OccupancyRequest(region=region(pb, **where),
                                        window=pb.Window(start=start, end=end, as_of=as_of)))
    rows = [{"hour": pd.Timestamp(h.hour, unit="s", tz="UTC"),
             "distinct": None if h.suppressed else h.distinct,
             "suppressed": h.suppressed} for h in r.hours]
    df = pd.DataFrame(rows, columns=["hour", "distinct", "suppressed"])
    df["distinct"] = df["distinct"].astype("Int64")
    return df


def grid_frame(channel, start, end, level=14, hourly=False, as_of=None, **where):
    """The population heat map as a pandas DataFrame: one row per S2 cell
    of `level` (and per hour with `hourly`) with at least one person;
    columns cell (token), hour (UTC, missing without `hourly`), distinct
    (missing when suppressed), suppressed, lat, lng (the cell's centre).
    Analysts ask for level 14 over one whole past UTC day."""
    import pandas as pd
    _, pb, rpc = stubs()
    q = rpc.QueryStub(channel)
    r = q.OccupancyGrid(pb.OccupancyGridRequest(
        region=region(pb, **where),
        window=pb.Window(start=start, end=end, as_of=as_of),
        level=level, hourly=hourly))
    rows = [{"cell": c.token,
             "hour": pd.Timestamp(c.hour, unit="s", tz="UTC") if c.HasField("hour") else pd.NaT,
             "distinct": None if c.suppressed else c.distinct,
             "suppressed": c.suppressed,
             "lat": c.lat, "lng": c.lng} for c in r.cells]
    df = pd.DataFrame(rows, columns=["cell", "hour", "distinct", "suppressed", "lat", "lng"])
    df["distinct"] = df["distinct"].astype("Int64")
    return df
