//! Choosing a free range: pure interval arithmetic over the pool and everything it must avoid.

use std::ops::RangeInclusive;

use burrow_contract::RANGE_SIZE;

/// IDs the allocator hands out ranges from, inclusive on both ends.
#[derive(Debug, Clone, Copy)]
pub struct Pool {
    pub start: u32,
    pub end: u32,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PoolError {
    #[error("pool {start}..={end} holds no aligned range of {RANGE_SIZE} IDs")]
    TooSmall { start: u32, end: u32 },
    #[error("pool must not include host ID 0")]
    IncludesRoot,
}

impl Pool {
    pub fn new(start: u32, end: u32) -> Result<Self, PoolError> {
        if start == 0 {
            return Err(PoolError::IncludesRoot);
        }
        let pool = Pool { start, end };
        if pool.first_base().is_none() {
            return Err(PoolError::TooSmall { start, end });
        }
        Ok(pool)
    }

    fn first_base(&self) -> Option<u32> {
        let base = self.start.checked_add(RANGE_SIZE - 1)? / RANGE_SIZE * RANGE_SIZE;
        (u64::from(base) + u64::from(RANGE_SIZE) - 1 <= u64::from(self.end)).then_some(base)
    }

    /// Number of aligned ranges the pool holds.
    pub fn capacity(&self) -> u32 {
        match self.first_base() {
            Some(first) => {
                ((u64::from(self.end) + 1 - u64::from(first)) / u64::from(RANGE_SIZE)) as u32
            }
            None => 0,
        }
    }

    /// The lowest aligned base whose range overlaps none of `taken`.
    pub fn pick(&self, taken: &[RangeInclusive<u32>]) -> Option<u32> {
        let mut taken: Vec<_> = taken.iter().filter(|r| !r.is_empty()).cloned().collect();
        taken.sort_by_key(|r| *r.start());
        let mut base = u64::from(self.first_base()?);
        let size = u64::from(RANGE_SIZE);
        let end = u64::from(self.end);
        let mut next = taken.iter().peekable();
        while base + size - 1 <= end {
            // Skip intervals wholly below the candidate.
            while next.peek().is_some_and(|r| u64::from(*r.end()) < base) {
                next.next();
            }
            match next.peek() {
                Some(r) if u64::from(*r.start()) < base + size => {
                    // Overlap: jump to the first aligned base past this interval.
                    base = (u64::from(*r.end()) / size + 1) * size;
                }
                _ => return Some(base as u32),
            }
        }
        None
    }
}

/// The `start:count` ranges of /etc/subuid or /etc/subgid (any owner), as ID intervals.
/// Malformed lines are skipped, as shadow-utils does.
pub fn parse_subid(text: &str) -> Vec<RangeInclusive<u32>> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.trim().split(':');
            let (_owner, start, count) = (fields.next()?, fields.next()?, fields.next()?);
            let start: u32 = start.parse().ok()?;
            let count: u32 = count.parse().ok()?;
            (count > 0).then(|| start..=start.saturating_add(count - 1))
        })
        .collect()
}

/// The numeric IDs in the third field of /etc/passwd or /etc/group lines.
pub fn parse_id_db(text: &str) -> Vec<RangeInclusive<u32>> {
    text.lines()
        .filter_map(|line| line.split(':').nth(2)?.parse::<u32>().ok())
        .map(|id| id..=id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: u32 = RANGE_SIZE;

    #[test]
    fn rejects_root_and_tiny_pools() {
        assert_eq!(Pool::new(0, 10 * R).unwrap_err(), PoolError::IncludesRoot);
        assert!(matches!(
            Pool::new(R + 1, 2 * R + 5),
            Err(PoolError::TooSmall { .. })
        ));
        assert_eq!(Pool::new(R, 2 * R - 1).unwrap().capacity(), 1);
    }

    #[test]
    fn aligns_up_and_picks_lowest_free() {
        let pool = Pool::new(8 * R + 1, 20 * R - 1).unwrap();
        assert_eq!(pool.pick(&[]), Some(9 * R));
        assert_eq!(pool.capacity(), 11);
        assert_eq!(pool.pick(&[9 * R..=10 * R - 1]), Some(10 * R));
        // An interval that straddles two ranges blocks both.
        assert_eq!(pool.pick(&[9 * R + 5..=10 * R + 5]), Some(11 * R));
        // A single ID (a passwd entry) blocks its range.
        assert_eq!(pool.pick(&[9 * R + 100..=9 * R + 100]), Some(10 * R));
    }

    #[test]
    fn exhausts_and_handles_pool_end_at_u32_max() {
        let pool = Pool::new(u32::MAX - 2 * R + 1, u32::MAX).unwrap();
        assert_eq!(pool.capacity(), 2);
        let a = pool.pick(&[]).unwrap();
        let b = pool.pick(&[a..=a + R - 1]).unwrap();
        assert_eq!(b, a + R);
        assert_eq!(pool.pick(&[a..=a + R - 1, b..=b + (R - 1)]), None);
    }

    #[test]
    fn ranges_are_disjoint_under_random_taken_sets() {
        let pool = Pool::new(R, 64 * R - 1).unwrap();
        let mut taken: Vec<RangeInclusive<u32>> = vec![];
        let mut seed = 12345u64;
        while let Some(base) = pool.pick(&taken) {
            assert!(taken
                .iter()
                .all(|t| base + R - 1 < *t.start() || base > *t.end()));
            assert_eq!(base % R, 0);
            taken.push(base..=base + R - 1);
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if seed.is_multiple_of(3) {
                taken.remove((seed as usize >> 7) % taken.len());
            }
        }
        assert_eq!(taken.len() as u32, pool.capacity());
    }

    #[test]
    fn parses_subid_and_id_dbs() {
        let sub = "alice:100000:65536\n# junk\nbob:x:1\ncarol:200000:0\n";
        assert_eq!(parse_subid(sub), vec![100000..=165535]);
        let passwd = "root:x:0:0::/root:/bin/sh\nweird\nbig:x:600000:600000::/:/bin/false\n";
        assert_eq!(parse_id_db(passwd), vec![0..=0, 600000..=600000]);
    }
}
