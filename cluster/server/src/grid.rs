//! `Query.OccupancyGrid`: the population heat map. An aggregate, not
//! person-level. Callers who see suppressed counts (analysts) ask only for
//! published units: cells of the published level (whole cells, whatever
//! the region) over one whole UTC day that has ended, per hour or for the
//! day. Cells of one level partition space and days partition time, so no
//! two answers can be differenced into a count smaller than a unit's; each
//! such query is logged.

use std::sync::Arc;

use hourcell_node::node::Node;
use hourcell_proto::v1;
use hourcell_query::DEFAULT_GRID_LEVEL;
use hourcell_storage::cell;
use tonic::Status;

use crate::answer::{blocking, log_aggregate, suppression, whole_past_day};
use crate::auth::{Auth, Principal, Rpc};
use crate::convert::{effective, invalid, region_from_proto, window_from_proto};

/// The grid level analysts are served.
pub const PUBLISHED_LEVEL: u8 = DEFAULT_GRID_LEVEL;

/// Answers `r` for `p`.
pub async fn occupancy_grid(
    node: &Arc<Node>,
    auth: &Auth,
    p: &Principal,
    r: v1::OccupancyGridRequest,
) -> Result<v1::OccupancyGridResponse, Status> {
    let level = match r.level {
        0 => DEFAULT_GRID_LEVEL,
        l => u8::try_from(l).map_err(|_| invalid("level", l, "an S2 level is at most 30"))?,
    };
    let now = node.now();
    let k = suppression(auth, p);
    let day = if k > 0 {
        let why = format!(
            "callers who see suppressed counts get the grid by published unit: level \
             {PUBLISHED_LEVEL} over one whole past UTC day (--level {PUBLISHED_LEVEL} --from DAY \
             --to DAY+1), so that answers cannot be differenced into counts below the threshold"
        );
        if level != PUBLISHED_LEVEL {
            return Err(invalid("level", level, &why));
        }
        Some(whole_past_day(r.window.as_ref(), now, &why)?)
    } else {
        None
    };
    let region = region_from_proto(r.region, "region")?;
    let (from, to, as_of) = window_from_proto(r.window, now)?;
    let (hourly, max) = (r.hourly, r.max_staleness_ms);
    let node2 = node.clone();
    let (stale, ans) = blocking(move || {
        let node = node2;
        let stale = node.read_barrier_bounded(max, Some((from, to)))?;
        let ans = node
            .query()
            .occupancy_grid(&region, from, to, as_of, level, hourly)?;
        Ok((stale, ans))
    })
    .await?;
    if let Some(day) = day {
        log_aggregate(
            node,
            p,
            Rpc::OccupancyGrid,
            serde_json::json!({ "level": level, "day": day, "hourly": hourly }),
        );
    }
    let cells = ans
        .cells
        .into_iter()
        .map(|c| {
            let (distinct, suppressed) = if c.distinct < k {
                (0, true)
            } else {
                (c.distinct, false)
            };
            let (lat, lng) = cell::center(c.cell);
            v1::GridCell {
                token: cell::token(c.cell),
                hour: c.hour.map(|h| h * 3600),
                distinct,
                suppressed,
                lat,
                lng,
            }
        })
        .collect();
    Ok(v1::OccupancyGridResponse {
        window: Some(effective(&ans.window)),
        level: u32::from(ans.level),
        cells,
        suppressed_below: k,
        staleness_ms: stale,
    })
}
