//! Least-significant-byte radix sort of internal ids.
//!
//! who-was-at gathers each person once per cell and day they were seen
//! (about 10,000 ids for a 1 km circle over a day) and sorts them to drop
//! the repeats. A byte pass costs one count and one scatter per id, and the
//! bytes that are the same in every id (the high bytes, below 2^24 persons)
//! are skipped: under callgrind this took a third of the instructions of
//! `sort_unstable`. Random 64-bit external ids gain nothing (eight passes
//! cost as much as a comparison sort of a few thousand), so they keep
//! `sort_unstable`.

/// Sorts `v` ascending; the same result as `sort_unstable`.
pub fn sort_u32(v: &mut Vec<u32>) {
    sort_by_bytes(v, 4, |x, shift| (x >> shift) as u8);
}

/// Below this length a comparison sort is cheaper than the counting passes.
const SMALL: usize = 64;

fn sort_by_bytes<T: Copy + Ord + Default>(v: &mut Vec<T>, bytes: u32, byte: fn(T, u32) -> u8) {
    if v.len() <= SMALL {
        v.sort_unstable();
        return;
    }
    let mut counts = vec![[0usize; 256]; bytes as usize];
    for &x in v.iter() {
        for (b, c) in counts.iter_mut().enumerate() {
            c[byte(x, 8 * b as u32) as usize] += 1;
        }
    }
    let mut tmp = vec![T::default(); v.len()];
    for (b, c) in counts.iter().enumerate() {
        // Every element has the same byte here: the pass would not move
        // anything.
        if c.iter().any(|&n| n == v.len()) {
            continue;
        }
        let mut offsets = [0usize; 256];
        let mut sum = 0;
        for (o, &n) in offsets.iter_mut().zip(c.iter()) {
            *o = sum;
            sum += n;
        }
        let shift = 8 * b as u32;
        for &x in v.iter() {
            let k = byte(x, shift) as usize;
            tmp[offsets[k]] = x;
            offsets[k] += 1;
        }
        std::mem::swap(v, &mut tmp);
    }
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
        for n in [0, 1, 2, 63, 64, 65, 1000, 5000] {
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
            assert_eq!(b, want, "u32, n = {n}");
        }
    }
}
