//! OR-ing hour masks by person id, for occupancy.
//!
//! Occupancy gathers, for each day of the window, one `(id, hour mask)`
//! per person and cell (or address) of the region, and needs each
//! person's hours over the whole region: the masks of equal ids OR-ed.
//! A hash map did that at about 20 ns an entry (hashing, probing, growing)
//! and was ~60% of a 7-day district's time. [`MaskMerger`] instead takes
//! the pairs into a vector, groups them by the top bits of `id - min` (a
//! counting sort over chunks of 2^16 ids, skipped when they all fall in
//! one), and ORs each chunk into a dense 2^16-entry table that stays in
//! the L2 cache. Internal ids are dense from 0 on one node, and spread
//! over the province's count on a shard, so the chunks keep the table
//! small either way.

/// Ids per chunk: the dense table holds `CHUNK` masks (256 KiB).
const CHUNK_BITS: u32 = 16;
const CHUNK: usize = 1 << CHUNK_BITS;

/// Below this many pairs, sorting them is cheaper than the table.
const SMALL: usize = 32;

/// Scratch space for [`MaskMerger::merge`], reused across a query's days.
#[derive(Default)]
pub(crate) struct MaskMerger {
    pairs: Vec<(u32, u32)>,
    sorted: Vec<(u32, u32)>,
    dense: Vec<u32>,
    touched: Vec<u32>,
    starts: Vec<u32>,
}

impl MaskMerger {
    /// Adds one `(id, mask)`; a zero mask adds nothing.
    #[inline]
    pub(crate) fn push(&mut self, id: u32, mask: u32) {
        if mask != 0 {
            self.pairs.push((id, mask));
        }
    }

    /// Calls `f(id, OR of its masks)` once for each id pushed since the
    /// last merge, in no particular order, and forgets them.
    pub(crate) fn merge(&mut self, f: &mut impl FnMut(u32, u32)) {
        let n = self.pairs.len();
        if n == 0 {
            return;
        }
        if n <= SMALL {
            self.pairs.sort_unstable_by_key(|p| p.0);
            let mut it = self.pairs.iter().copied();
            let (mut id, mut m) = it.next().expect("non-empty");
            for (i, x) in it {
                if i == id {
                    m |= x;
                } else {
                    f(id, m);
                    (id, m) = (i, x);
                }
            }
            f(id, m);
            self.pairs.clear();
            return;
        }
        let (lo, hi) = self
            .pairs
            .iter()
            .fold((u32::MAX, 0), |(lo, hi), &(i, _)| (lo.min(i), hi.max(i)));
        let chunks = ((hi - lo) >> CHUNK_BITS) as usize + 1;
        let span = (hi - lo) as usize + 1;
        if self.dense.len() < span.min(CHUNK) {
            self.dense.resize(span.min(CHUNK), 0);
        }
        let pairs = std::mem::take(&mut self.pairs);
        if chunks == 1 {
            self.or_chunk(&pairs, lo, f);
        } else {
            // A counting sort of the pairs by chunk.
            self.starts.clear();
            self.starts.resize(chunks + 1, 0);
            for &(i, _) in &pairs {
                self.starts[((i - lo) >> CHUNK_BITS) as usize + 1] += 1;
            }
            for c in 0..chunks {
                self.starts[c + 1] += self.starts[c];
            }
            self.sorted.clear();
            self.sorted.resize(n, (0, 0));
            let mut next = self.starts.clone();
            for &p in &pairs {
                let c = ((p.0 - lo) >> CHUNK_BITS) as usize;
                self.sorted[next[c] as usize] = p;
                next[c] += 1;
            }
            let sorted = std::mem::take(&mut self.sorted);
            for c in 0..chunks {
                let (a, b) = (self.starts[c] as usize, self.starts[c + 1] as usize);
                if a < b {
                    self.or_chunk(&sorted[a..b], lo + ((c as u32) << CHUNK_BITS), f);
                }
            }
            self.sorted = sorted;
        }
        self.pairs = pairs;
        self.pairs.clear();
    }

    /// ORs `pairs`, whose ids lie in `[base, base + CHUNK)`, into the dense
    /// table, hands each id's mask to `f` and clears what it touched.
    fn or_chunk(&mut self, pairs: &[(u32, u32)], base: u32, f: &mut impl FnMut(u32, u32)) {
        self.touched.clear();
        for &(i, m) in pairs {
            let o = (i - base) as usize;
            let d = &mut self.dense[o];
            if *d == 0 {
                self.touched.push(o as u32);
            }
            *d |= m;
        }
        for &o in &self.touched {
            let d = &mut self.dense[o as usize];
            f(base + o, *d);
            *d = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn merged(pairs: &[(u32, u32)]) -> BTreeMap<u32, u32> {
        let mut m = MaskMerger::default();
        for &(i, x) in pairs {
            m.push(i, x);
        }
        let mut out = BTreeMap::new();
        m.merge(&mut |i, x| {
            assert!(out.insert(i, x).is_none(), "id {i} handed out twice");
        });
        // The merger is empty again and its table clean.
        let mut again = 0;
        m.merge(&mut |_, _| again += 1);
        assert_eq!(again, 0);
        assert!(m.dense.iter().all(|&d| d == 0));
        out
    }

    fn expected(pairs: &[(u32, u32)]) -> BTreeMap<u32, u32> {
        let mut out = BTreeMap::new();
        for &(i, x) in pairs {
            if x != 0 {
                *out.entry(i).or_insert(0) |= x;
            }
        }
        out
    }

    /// A small xorshift, so the cases are the same on every run.
    fn ids(seed: u64, n: usize, spread: u32) -> Vec<(u32, u32)> {
        let mut s = seed | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        (0..n)
            .map(|_| {
                let r = next();
                (
                    (r % u64::from(spread)) as u32,
                    (next() as u32) & 0x00ff_ffff,
                )
            })
            .collect()
    }

    #[test]
    fn agrees_with_a_map_for_small_dense_and_chunked_ids() {
        for (seed, n, spread) in [
            (1, 0, 10),
            (2, 5, 10),
            (3, SMALL, 40),
            (4, SMALL + 1, 40),
            (5, 5_000, 3_000),
            (6, 5_000, 65_536),
            (7, 5_000, 65_537),
            (8, 20_000, 70_000_000),
            (9, 20_000, u32::MAX),
        ] {
            let p = ids(seed, n, spread);
            assert_eq!(
                merged(&p),
                expected(&p),
                "seed {seed}, n {n}, spread {spread}"
            );
        }
    }

    #[test]
    fn the_extremes_of_the_id_range_and_repeated_merges() {
        let p = vec![
            (u32::MAX, 1),
            (0, 2),
            (u32::MAX, 4),
            (0, 8),
            (1 << 16, 16),
            ((1 << 16) - 1, 32),
        ];
        let mut many = p.clone();
        many.extend(ids(11, 100, u32::MAX));
        assert_eq!(merged(&many), expected(&many));
        let mut m = MaskMerger::default();
        for round in 0..3u32 {
            let q = ids(20 + u64::from(round), 1_000, 200_000);
            for &(i, x) in &q {
                m.push(i, x);
            }
            let mut out = BTreeMap::new();
            m.merge(&mut |i, x| {
                out.insert(i, x);
            });
            assert_eq!(out, expected(&q), "round {round}");
        }
    }
}
