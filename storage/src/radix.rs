//! Sorting of person ids for who-was-at.
//!
//! who-was-at gathers each person once per cell and day they were seen
//! (about 4,500 internal ids for a 1 km circle over a day), sorts them to
//! drop the repeats, maps them to external ids and sorts those (the answer
//! ascends). Both kinds are spread fairly evenly over their range: internal
//! ids are dense from 0, external ids are pseudonymous 64-bit hashes.
//!
//! [`sort_u32`] and [`sort_u64`] therefore make one pass that drops each
//! id into one of about `len` buckets by its offset from the minimum (the
//! top bits of that offset), then sort each bucket, usually of one to three
//! ids. Under callgrind this took about a quarter of the instructions of
//! `sort_unstable` on random 64-bit ids and half of an LSB radix sort on
//! internal ids. Ids bunched into a few buckets cost one `sort_unstable`
//! per bucket: never much worse than sorting the whole slice.

/// Sorts `v` ascending; the same result as `sort_unstable`.
pub fn sort_u32(v: &mut Vec<u32>) {
    bucket_sort(v, |x| x as u64);
}

/// Sorts `v` ascending; the same result as `sort_unstable`.
pub fn sort_u64(v: &mut Vec<u64>) {
    bucket_sort(v, |x| x);
}

/// Sorts `v` ascending and drops repeats; the same result as
/// `sort_unstable` then `dedup`. Ids that span no more than 256 times
/// their count (internal ids: dense from 0), and fewer than 2^28, go
/// through a bitset: one bit set per id, then one scan of the words.
pub fn sort_dedup_u32(v: &mut Vec<u32>) {
    let n = v.len();
    if n <= SMALL {
        v.sort_unstable();
        v.dedup();
        return;
    }
    let (lo, hi) = v
        .iter()
        .fold((u32::MAX, 0), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    let words = ((hi - lo) / 64) as usize + 1;
    // At most 32 bytes of bitset per id, and never more than 32 MiB.
    if words > 4 * n || words > MAX_BITSET_WORDS {
        sort_u32(v);
        v.dedup();
        return;
    }
    let mut bits = vec![0u64; words];
    for &x in v.iter() {
        let o = x - lo;
        bits[(o / 64) as usize] |= 1 << (o % 64);
    }
    v.clear();
    for (i, &w) in bits.iter().enumerate() {
        let mut w = w;
        let base = lo + 64 * i as u32;
        while w != 0 {
            v.push(base + w.trailing_zeros());
            w &= w - 1;
        }
    }
}

/// The largest bitset [`sort_dedup_u32`] builds: 2^22 words (32 MiB), ids
/// spanning 268 million.
const MAX_BITSET_WORDS: usize = 1 << 22;

/// Below this length a comparison sort is cheaper than the bucket pass.
const SMALL: usize = 64;

/// At most 2^this many buckets (64 K counters).
const MAX_BUCKET_BITS: u32 = 16;

/// Buckets longer than this are sorted on their own before the final
/// insertion pass, which then only steps over them.
const SHORT_BUCKET: usize = 16;

fn bucket_sort<T: Copy + Ord + Default>(v: &mut Vec<T>, key: fn(T) -> u64) {
    let n = v.len();
    if n <= SMALL {
        v.sort_unstable();
        return;
    }
    let (mut lo, mut hi) = (u64::MAX, 0u64);
    for &x in v.iter() {
        let k = key(x);
        lo = lo.min(k);
        hi = hi.max(k);
    }
    let span = hi - lo;
    if span == 0 {
        return;
    }
    // About one bucket per id: the top `bits` bits of the offset from `lo`.
    let bits = (usize::BITS - n.leading_zeros()).min(MAX_BUCKET_BITS);
    let used = u64::BITS - span.leading_zeros();
    let shift = used.saturating_sub(bits);
    let buckets = (span >> shift) as usize + 1;
    let bucket = |x: T| ((key(x) - lo) >> shift) as usize;
    // ends[b]: first where bucket b begins, then (after the scatter)
    // where it ends.
    let mut ends = vec![0usize; buckets];
    for &x in v.iter() {
        ends[bucket(x)] += 1;
    }
    let mut sum = 0;
    let mut longest = 0;
    for e in ends.iter_mut() {
        longest = longest.max(*e);
        let len = *e;
        *e = sum;
        sum += len;
    }
    let mut out = vec![T::default(); n];
    for &x in v.iter() {
        let b = bucket(x);
        out[ends[b]] = x;
        ends[b] += 1;
    }
    if longest > SHORT_BUCKET {
        let mut start = 0;
        for &end in &ends {
            if end - start > SHORT_BUCKET {
                out[start..end].sort_unstable();
            }
            start = end;
        }
    }
    // Buckets are in order; only ids inside a short bucket may be out of
    // order, so each moves back a step or two at most.
    for i in 1..n {
        let x = out[i];
        let mut j = i;
        while j > 0 && out[j - 1] > x {
            out[j] = out[j - 1];
            j -= 1;
        }
        out[j] = x;
    }
    *v = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (no rand dependency in storage).
    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn same_order_as_sort_unstable() {
        let mut seed = 0x9E37_79B9_7F4A_7C15;
        for n in [0, 1, 2, 63, 64, 65, 1000, 5000, 70_000] {
            let mut a: Vec<u32> = (0..n).map(|_| xorshift(&mut seed) as u32).collect();
            // repeats and shared high bytes as well
            a.extend((0..n / 3).map(|i| (i % 7) as u32));
            let mut want = a.clone();
            want.sort_unstable();
            sort_u32(&mut a);
            assert_eq!(a, want, "u32, n = {n}");

            let mut b: Vec<u32> = (0..n)
                .map(|_| (xorshift(&mut seed) % 100_000) as u32)
                .collect();
            let mut want = b.clone();
            want.sort_unstable();
            sort_u32(&mut b);
            assert_eq!(b, want, "u32 below 100,000, n = {n}");

            // Random 64-bit ids, the extremes, and ids bunched near one
            // value with a few far away (most land in one bucket).
            let mut c: Vec<u64> = (0..n).map(|_| xorshift(&mut seed)).collect();
            c.extend([0, u64::MAX, u64::MAX, 0]);
            let mut want = c.clone();
            want.sort_unstable();
            sort_u64(&mut c);
            assert_eq!(c, want, "u64, n = {n}");

            let mut d: Vec<u64> = (0..n)
                .map(|i| {
                    if i % 100 == 0 {
                        xorshift(&mut seed)
                    } else {
                        1_000_000 + xorshift(&mut seed) % 1000
                    }
                })
                .collect();
            let mut want = d.clone();
            want.sort_unstable();
            sort_u64(&mut d);
            assert_eq!(d, want, "bunched u64, n = {n}");

            for ids in [&a, &b] {
                let mut f: Vec<u32> = ids.iter().rev().copied().collect();
                f.extend(ids.iter().take(n / 2));
                let mut want = f.clone();
                want.sort_unstable();
                want.dedup();
                sort_dedup_u32(&mut f);
                assert_eq!(f, want, "sort_dedup_u32, n = {n}");
            }

            let mut e: Vec<u64> = vec![42; n];
            sort_u64(&mut e);
            assert_eq!(e, vec![42; n], "all equal, n = {n}");
        }
    }
}
