//! The occupancy grid as PNG heat maps (plotters): cells filled by their
//! count on the viridis scale, a colour-bar legend, a scale bar and the
//! window in the title. With hourly counts, one frame per hour.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;

use super::*;

const SIZE: (u32, u32) = (1000, 860);
const LEGEND_W: u32 = 150;
/// Where a TrueType font for the labels is looked for (after HOURCELL_FONT).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];
/// Suppressed cells: drawn, but not coloured by a count.
const SUPPRESSED: RGBColor = RGBColor(200, 200, 200);

/// Why no font could be loaded for the labels.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FontError {
    #[error(
        "PNG output needs a TrueType font for its labels: install fonts-dejavu-core, or set \
         HOURCELL_FONT to a .ttf file"
    )]
    Missing,
    #[error("cannot read the font {path}: {why}")]
    Unreadable { path: String, why: String },
    #[error("{path} is not a font plotters can read")]
    NotAFont { path: String },
}

/// Registers the labels' font once per process (the outcome is kept, so
/// a missing font is reported the same way every time).
fn ensure_font() -> std::result::Result<(), FontError> {
    static FONT: std::sync::OnceLock<std::result::Result<(), FontError>> =
        std::sync::OnceLock::new();
    FONT.get_or_init(|| {
        let path = std::env::var("HOURCELL_FONT")
            .ok()
            .into_iter()
            .chain(FONTS.iter().map(|s| s.to_string()))
            .find(|p| Path::new(p).exists())
            .ok_or(FontError::Missing)?;
        let bytes = std::fs::read(&path).map_err(|e| FontError::Unreadable {
            path: path.clone(),
            why: e.to_string(),
        })?;
        // Registered once per process, for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| FontError::NotAFont { path })
    })
    .clone()
}

fn draw_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing the PNG: {e}")
}

/// Writes the grid to `out`: one PNG, or with hourly counts one frame per
/// hour (`frame-YYYYMMDDTHHZ.png`) into the directory `out`. Every frame
/// has the same extent and colour scale. Returns the files written.
pub fn write_png(r: &v1::OccupancyGridResponse, out: &Path) -> Result<Vec<PathBuf>> {
    ensure_font()?;
    let hours: BTreeSet<Option<i64>> = r.cells.iter().map(|c| c.hour).collect();
    if !hours.iter().any(Option::is_some) {
        draw(r, None, out)?;
        return Ok(vec![out.to_path_buf()]);
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut files = Vec::new();
    for h in hours.into_iter().flatten() {
        let stamp = format_time(h).replace([':', '-'], "");
        let path = out.join(format!("frame-{}.png", &stamp[..stamp.len().min(12)]));
        draw(r, Some(h), &path)?;
        files.push(path);
    }
    Ok(files)
}

fn draw(r: &v1::OccupancyGridResponse, hour: Option<i64>, path: &Path) -> Result<()> {
    let corners = |c: &v1::GridCell| -> Result<[(f64, f64); 4]> {
        let id = hourcell_storage::cell::parse_token(&c.token)
            .ok_or_else(|| anyhow!("the server sent a bad cell token {:?}", c.token))?;
        Ok(hourcell_storage::cell::corners(id))
    };
    // The extent of every cell of the answer, so that frames line up.
    let (mut lat, mut lng) = ((f64::MAX, f64::MIN), (f64::MAX, f64::MIN));
    for c in &r.cells {
        for (a, b) in corners(c)? {
            lat = (lat.0.min(a), lat.1.max(a));
            lng = (lng.0.min(b), lng.1.max(b));
        }
    }
    if r.cells.is_empty() {
        (lat, lng) = ((0.0, 1.0), (0.0, 1.0));
    }
    let pad = ((lat.1 - lat.0).max(lng.1 - lng.0) * 0.03).max(1e-4);
    let max = r.cells.iter().map(|c| c.distinct).max().unwrap_or(0).max(1);
    let w = r.window.clone().unwrap_or_default();
    let when = match hour {
        Some(h) => format!("{} .. {}", format_time(h), format_time(h + 3600)),
        None => format!("{} .. {}", format_time(w.start), format_time(w.end)),
    };

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let (map, legend) = root.split_horizontally(SIZE.0 - LEGEND_W);
    let mut chart = ChartBuilder::on(&map)
        .caption(
            format!("Distinct persons per level-{} cell, {when}", r.level),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d((lng.0 - pad)..(lng.1 + pad), (lat.0 - pad)..(lat.1 + pad))
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("longitude")
        .y_desc("latitude")
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(draw_err)?;
    for c in r.cells.iter().filter(|c| hour.is_none() || c.hour == hour) {
        let ring: Vec<(f64, f64)> = corners(c)?.iter().map(|&(a, b)| (b, a)).collect();
        let fill = if c.suppressed {
            SUPPRESSED
        } else {
            ViridisRGB.get_color(c.distinct as f32 / max as f32)
        };
        chart
            .draw_series(std::iter::once(Polygon::new(ring, fill.filled())))
            .map_err(draw_err)?;
    }
    // A scale bar of a round length, about a fifth of the width.
    let mid = (lat.0 + lat.1) / 2.0;
    let m_per_deg = 111_195.0 * mid.to_radians().cos();
    let span_m = (lng.1 - lng.0 + 2.0 * pad) * m_per_deg;
    let bar_m = [100.0, 200.0, 500.0, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5]
        .into_iter()
        .rfind(|&m| m <= span_m / 5.0)
        .unwrap_or(100.0);
    let (x0, y0) = (lng.0 - pad * 0.5, lat.0 - pad * 0.5);
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(x0, y0), (x0 + bar_m / m_per_deg, y0)],
            BLACK.stroke_width(4),
        )))
        .map_err(draw_err)?;
    let label = if bar_m >= 1e3 {
        format!("{} km", bar_m / 1e3)
    } else {
        format!("{bar_m} m")
    };
    chart
        .draw_series(std::iter::once(Text::new(
            label,
            (x0, y0 + pad * 0.45),
            ("sans-serif", 14),
        )))
        .map_err(draw_err)?;

    // The legend: a colour bar from 0 to the largest count.
    let h = SIZE.1 as i32;
    let (top, bottom, left) = (80, h - 120, 30);
    for y in top..bottom {
        let f = (bottom - y) as f32 / (bottom - top) as f32;
        legend
            .draw(&Rectangle::new(
                [(left, y), (left + 30, y + 1)],
                ViridisRGB.get_color(f).filled(),
            ))
            .map_err(draw_err)?;
    }
    let text = |s: String, y: i32| Text::new(s, (left + 38, y), ("sans-serif", 14));
    legend
        .draw(&text("persons".into(), top - 30))
        .map_err(draw_err)?;
    legend
        .draw(&text(max.to_string(), top - 7))
        .map_err(draw_err)?;
    legend
        .draw(&text("0".into(), bottom - 7))
        .map_err(draw_err)?;
    if r.suppressed_below > 0 {
        legend
            .draw(&Rectangle::new(
                [(left, bottom + 30), (left + 30, bottom + 50)],
                SUPPRESSED.filled(),
            ))
            .map_err(draw_err)?;
        legend
            .draw(&text(format!("< {}", r.suppressed_below), bottom + 33))
            .map_err(draw_err)?;
    }
    root.present().map_err(draw_err)?;
    Ok(())
}
