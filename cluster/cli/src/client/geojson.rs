//! `--polygon`: a GeoJSON (RFC 7946) Polygon or MultiPolygon, a Feature
//! with one of those geometries, or a FeatureCollection of exactly one
//! such Feature; read from a file, from standard input (`-`) or inline (a
//! value starting with `{`). Positions are `[longitude, latitude]`, as
//! GeoJSON writes them. Only the shape is checked here; the server
//! validates the geometry (closed, simple rings and so on) and says what
//! is wrong.

use std::io::Read as _;

use anyhow::{anyhow, bail, Context as _, Result};
use hourcell_proto::v1;
use serde_json::Value;

const WANT: &str =
    "give a GeoJSON Polygon, MultiPolygon, a Feature of one, or a FeatureCollection of exactly one";

/// Reads `--polygon VALUE`: inline JSON, `-` for stdin, else a file path.
pub fn read_polygon(flag: &str, value: &str) -> Result<v1::MultiPolygon> {
    let text = if value.trim_start().starts_with('{') {
        value.to_string()
    } else if value == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .with_context(|| format!("{flag} -: reading standard input"))?;
        s
    } else {
        std::fs::read_to_string(value)
            .with_context(|| format!("{flag} {value}: reading the file"))?
    };
    let json: Value =
        serde_json::from_str(&text).map_err(|e| anyhow!("invalid {flag}: not JSON ({e})"))?;
    geometry(&json).map_err(|e| anyhow!("invalid {flag}: {e:#}"))
}

/// A GeoJSON object as a proto MultiPolygon.
pub fn geometry(v: &Value) -> Result<v1::MultiPolygon> {
    let kind = v
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("no \"type\" member: {WANT}"))?;
    match kind {
        "FeatureCollection" => {
            let features = v
                .get("features")
                .and_then(Value::as_array)
                .ok_or_else(|| anyhow!("a FeatureCollection needs a \"features\" array"))?;
            match features.as_slice() {
                [one] => geometry(one),
                _ => bail!(
                    "the FeatureCollection has {} features: give exactly one (merge several \
                     polygons into one MultiPolygon)",
                    features.len()
                ),
            }
        }
        "Feature" => match v.get("geometry") {
            Some(g) if !g.is_null() => geometry(g),
            _ => bail!("the Feature has no geometry: {WANT}"),
        },
        "Polygon" => Ok(v1::MultiPolygon {
            polygons: vec![polygon(coordinates(v)?)?],
        }),
        "MultiPolygon" => {
            let polys = coordinates(v)?
                .as_array()
                .ok_or_else(|| anyhow!("MultiPolygon coordinates must be an array of polygons"))?;
            Ok(v1::MultiPolygon {
                polygons: polys
                    .iter()
                    .enumerate()
                    .map(|(i, p)| polygon(p).with_context(|| format!("polygon {}", i + 1)))
                    .collect::<Result<_>>()?,
            })
        }
        other => bail!("a {other} is not a polygon: {WANT}"),
    }
}

fn coordinates(v: &Value) -> Result<&Value> {
    v.get("coordinates")
        .ok_or_else(|| anyhow!("no \"coordinates\" member"))
}

fn polygon(v: &Value) -> Result<v1::Polygon> {
    let rings = v
        .as_array()
        .ok_or_else(|| anyhow!("Polygon coordinates must be an array of rings"))?;
    Ok(v1::Polygon {
        rings: rings
            .iter()
            .enumerate()
            .map(|(i, r)| ring(r).with_context(|| format!("ring {}", i + 1)))
            .collect::<Result<_>>()?,
    })
}

fn ring(v: &Value) -> Result<v1::Ring> {
    let points = v
        .as_array()
        .ok_or_else(|| anyhow!("a ring must be an array of positions"))?;
    Ok(v1::Ring {
        points: points
            .iter()
            .enumerate()
            .map(|(i, p)| position(p).with_context(|| format!("position {}", i + 1)))
            .collect::<Result<_>>()?,
    })
}

fn position(v: &Value) -> Result<v1::LatLng> {
    let nums = v
        .as_array()
        .map(|a| a.iter().map(Value::as_f64).collect::<Vec<_>>());
    match nums.as_deref() {
        // A third number (altitude) is allowed by RFC 7946 and ignored.
        Some([Some(lng), Some(lat)] | [Some(lng), Some(lat), Some(_)]) => Ok(v1::LatLng {
            lat: *lat,
            lng: *lng,
        }),
        _ => bail!("{v} is not a position [longitude, latitude]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<v1::MultiPolygon> {
        geometry(&serde_json::from_str(s).unwrap())
    }

    const SQUARE: &str = "[[[120.1,30.2],[120.2,30.2],[120.2,30.3],[120.1,30.3],[120.1,30.2]]]";

    #[test]
    fn every_accepted_wrapping_gives_the_same_polygon() {
        let p = parse(&format!(r#"{{"type":"Polygon","coordinates":{SQUARE}}}"#)).unwrap();
        assert_eq!(p.polygons.len(), 1);
        let r = &p.polygons[0].rings[0].points;
        assert_eq!((r.len(), r[1].lat, r[1].lng), (5, 30.2, 120.2));
        let feature = format!(
            r#"{{"type":"Feature","properties":{{}},"geometry":{{"type":"Polygon","coordinates":{SQUARE}}}}}"#
        );
        assert_eq!(parse(&feature).unwrap(), p);
        let fc = format!(r#"{{"type":"FeatureCollection","features":[{feature}]}}"#);
        assert_eq!(parse(&fc).unwrap(), p);
        let mp = format!(r#"{{"type":"MultiPolygon","coordinates":[{SQUARE},{SQUARE}]}}"#);
        assert_eq!(parse(&mp).unwrap().polygons.len(), 2);
    }

    #[test]
    fn other_shapes_are_refused_saying_why() {
        let feature = format!(
            r#"{{"type":"Feature","geometry":{{"type":"Polygon","coordinates":{SQUARE}}}}}"#
        );
        let two = format!(r#"{{"type":"FeatureCollection","features":[{feature},{feature}]}}"#);
        for (text, want) in [
            (two.as_str(), "has 2 features: give exactly one"),
            (
                r#"{"type":"Point","coordinates":[1,2]}"#,
                "a Point is not a polygon",
            ),
            (r#"{"type":"Feature","geometry":null}"#, "no geometry"),
            (
                r#"{"type":"Polygon","coordinates":[[[1,2],["a",3]]]}"#,
                "ring 1: position 2",
            ),
            (r#"{"coordinates":[]}"#, "no \"type\""),
        ] {
            let e = format!("{:#}", parse(text).unwrap_err());
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
