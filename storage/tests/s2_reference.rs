//! The cell mapping against Google's S2 reference values in
//! `../shared/testdata/s2_cells.csv` (lat,lng,level,cell_id,token,...).

use std::path::PathBuf;

use hourcell_storage::cell::{cell_at, parse_token, token};

/// This crate's directory as cargo gives it to the running test (a test
/// binary reused from a checkout at another path still reads this one's
/// files); the directory it was built in otherwise.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

fn reference_file() -> PathBuf {
    let p = manifest_dir().join("../../shared/testdata/s2_cells.csv");
    assert!(
        p.exists(),
        "reference file {} is missing: the shared/ folder must sit beside the checkout",
        p.display()
    );
    p
}

/// A point exactly on a cube-face corner (|x| = |y| = |z| after
/// projection) has no unique face; Google's library and ours may pick
/// different faces, both correctly.
fn on_face_corner(lat: f64, lng: f64) -> bool {
    let (la, ln) = (lat.to_radians(), lng.to_radians());
    let (x, y, z) = (la.cos() * ln.cos(), la.cos() * ln.sin(), la.sin());
    let (ax, ay, az) = (x.abs(), y.abs(), z.abs());
    let eps = 1e-12;
    (ax - ay).abs() < eps && (ay - az).abs() < eps
}

#[test]
fn every_reference_row_matches() {
    let mut rdr = csv::Reader::from_path(reference_file()).unwrap();
    let (mut checked, mut corners, mut mismatches) = (0, 0, Vec::new());
    for row in rdr.records() {
        let row = row.unwrap();
        let lat: f64 = row[0].parse().unwrap();
        let lng: f64 = row[1].parse().unwrap();
        let level: u8 = row[2].parse().unwrap();
        let want_id: u64 = row[3].parse().unwrap();
        let want_token = &row[4];
        let got = cell_at(lat, lng, level);
        if got != want_id || token(got) != want_token {
            if on_face_corner(lat, lng) {
                corners += 1;
                continue;
            }
            mismatches.push(format!(
                "({lat},{lng}) level {level}: got {got} {} want {want_id} {want_token}",
                token(got)
            ));
        }
        assert_eq!(parse_token(want_token), Some(want_id), "token {want_token}");
        checked += 1;
    }
    assert!(checked > 10_000, "only {checked} rows checked");
    assert!(
        mismatches.is_empty(),
        "{} mismatches (and {corners} face-corner rows skipped):\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(20)].join("\n")
    );
    eprintln!(
        "{checked} reference rows match; {corners} rows exactly on a cube-face corner were skipped"
    );
}
