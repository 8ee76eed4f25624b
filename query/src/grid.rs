//! The occupancy grid (a population heat map): distinct persons per S2
//! cell of one level, per hour or over the whole window.
//!
//! Every grid cell that meets the region is counted whole, from all of the
//! slice cells under it, so the count of a cell does not depend on the
//! region asked: two answers never differ in a cell's count, and cannot be
//! differenced into a part of one.

use std::collections::HashMap;

use s2::cellid::CellID;

use crate::engine::{day_masks, mask_of, QueryEngine};
use crate::error::{QueryError, Result};
use crate::region::{Region, SpatialPlan};
use crate::source::DayKeys;
use crate::time::Window;

/// The grid level when the request names none (cells of about 600 m).
pub const DEFAULT_GRID_LEVEL: u8 = 14;

/// One grid cell's count, over one hour or the whole window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GridCount {
    /// The S2 cell id at the grid level.
    pub cell: u64,
    /// The UTC epoch hour, or `None` for the whole window.
    pub hour: Option<i64>,
    pub distinct: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GridAnswer {
    pub window: Window,
    pub level: u8,
    /// Cells (and hours) with at least one person, ascending.
    pub cells: Vec<GridCount>,
}

impl QueryEngine {
    /// Distinct persons per cell of `level` meeting `region` (a rect,
    /// circle, cell list or polygon), per hour if `hourly`, else over the window.
    pub fn occupancy_grid(
        &self,
        region: &Region,
        from: i64,
        to: i64,
        as_of: i64,
        level: u8,
        hourly: bool,
    ) -> Result<GridAnswer> {
        let w = Window::new(from, to, as_of)?;
        region.validate("region")?;
        let slice_level = self.catalog().slice_level();
        if !(1..=slice_level).contains(&level) {
            return Err(QueryError::invalid(
                "level",
                level,
                format!("the grid level must be between 1 and the slice level, {slice_level}"),
            ));
        }
        // Planned at the grid level: the ranges hold every slice cell under
        // each grid cell that meets the region, and `matches` tests grid
        // cells.
        let plan = SpatialPlan::new(region, level).ok_or_else(|| {
            QueryError::invalid(
                "region",
                "",
                "a grid needs a rect, a circle, cell tokens or a polygon (not addresses or an area)",
            )
        })?;
        let up = |c: u64| CellID(c).parent(u64::from(level)).0;
        let mut ids: HashMap<(u64, Option<i64>), Vec<u32>> = HashMap::new();
        let dm = day_masks(&w);
        let days: Vec<i64> = dm.iter().map(|m| m.0).collect();
        self.slices().day_sets(
            &days,
            &DayKeys::Cells(plan.ranges.clone()),
            &mut |c| plan.matches(up(c)),
            &mut |day, c, set| {
                let mask = mask_of(&dm, day);
                let g = up(c);
                for &(id, m) in set {
                    let mut x = m & mask;
                    if x == 0 {
                        continue;
                    }
                    if !hourly {
                        ids.entry((g, None)).or_default().push(id);
                        continue;
                    }
                    while x != 0 {
                        let h = day * 24 + i64::from(x.trailing_zeros());
                        ids.entry((g, Some(h))).or_default().push(id);
                        x &= x - 1;
                    }
                }
            },
        )?;
        let mut cells: Vec<GridCount> = ids
            .into_iter()
            .map(|((cell, hour), mut v)| {
                hourcell_storage::radix::sort_dedup_u32(&mut v);
                GridCount {
                    cell,
                    hour,
                    distinct: v.len() as u64,
                }
            })
            .collect();
        cells.sort_unstable();
        Ok(GridAnswer {
            window: w,
            level,
            cells,
        })
    }
}
