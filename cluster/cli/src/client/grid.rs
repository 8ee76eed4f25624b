//! The occupancy grid as a table, CSV, JSON or GeoJSON (a FeatureCollection
//! of cell polygons that QGIS and kepler.gl open as they are).

use super::*;

/// A cell's count as shown: `None` when suppressed.
fn count(c: &v1::GridCell) -> Option<u64> {
    (!c.suppressed).then_some(c.distinct)
}

fn hour_text(c: &v1::GridCell) -> Option<String> {
    c.hour.map(format_time)
}

pub(crate) fn rows(
    r: &v1::OccupancyGridResponse,
    missing: &str,
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let k = r.suppressed_below;
    let rows = r
        .cells
        .iter()
        .map(|c| {
            vec![
                c.token.clone(),
                hour_text(c).unwrap_or_else(|| missing.to_string()),
                count_text(c.distinct, c.suppressed, k),
                format!("{:.6}", c.lat),
                format!("{:.6}", c.lng),
            ]
        })
        .collect();
    (vec!["cell", "hour", "distinct", "lat", "lng"], rows)
}

pub(crate) fn summary(r: &v1::OccupancyGridResponse) -> String {
    let w = r.window.clone().unwrap_or_default();
    let mut s = format!(
        "{} at level {}, {}",
        plural(r.cells.len() as u64, "cell", "cells"),
        r.level,
        window_text(&w)
    );
    if r.suppressed_below > 0 {
        s.push_str(&format!("; counts below {} suppressed", r.suppressed_below));
    }
    s
}

#[derive(Serialize)]
struct CellJson {
    cell: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    hour: Option<String>,
    distinct: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    suppressed: bool,
    lat: f64,
    lng: f64,
}

#[derive(Serialize)]
struct GridJson {
    from: String,
    to: String,
    level: u32,
    suppressed_below: u64,
    cells: Vec<CellJson>,
}

pub(crate) fn to_json(r: &v1::OccupancyGridResponse, pretty: bool) -> Result<String> {
    let w = r.window.clone().unwrap_or_default();
    json_string(
        &GridJson {
            from: format_time(w.start),
            to: format_time(w.end),
            level: r.level,
            suppressed_below: r.suppressed_below,
            cells: r
                .cells
                .iter()
                .map(|c| CellJson {
                    cell: c.token.clone(),
                    hour: hour_text(c),
                    distinct: count(c),
                    suppressed: c.suppressed,
                    lat: c.lat,
                    lng: c.lng,
                })
                .collect(),
        },
        pretty,
    )
}

/// A FeatureCollection: one Polygon per cell (and hour), its ring the
/// cell's corners in (lng, lat) order, closed; the count, hour and level
/// as properties (a suppressed count is null with `suppressed: true`).
pub(crate) fn to_geojson(r: &v1::OccupancyGridResponse) -> Result<String> {
    let w = r.window.clone().unwrap_or_default();
    let mut features = Vec::with_capacity(r.cells.len());
    for c in &r.cells {
        let id = hourcell_storage::cell::parse_token(&c.token)
            .ok_or_else(|| anyhow!("the server sent a bad cell token {:?}", c.token))?;
        let corners = hourcell_storage::cell::corners(id);
        let mut ring: Vec<[f64; 2]> = corners.iter().map(|&(lat, lng)| [lng, lat]).collect();
        ring.push(ring[0]);
        features.push(serde_json::json!({
            "type": "Feature",
            "geometry": { "type": "Polygon", "coordinates": [ring] },
            "properties": {
                "cell": c.token,
                "level": r.level,
                "hour": hour_text(c),
                "distinct": count(c),
                "suppressed": c.suppressed,
            },
        }));
    }
    let fc = serde_json::json!({
        "type": "FeatureCollection",
        "properties": {
            "from": format_time(w.start),
            "to": format_time(w.end),
            "level": r.level,
            "suppressed_below": r.suppressed_below,
        },
        "features": features,
    });
    Ok(format!("{}\n", serde_json::to_string(&fc)?))
}
