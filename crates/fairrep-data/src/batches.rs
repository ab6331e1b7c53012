//! Group-stratified minibatches: every batch holds rows of every group.
//!
//! For `n` rows the epoch has `B = ceil(n / batch_size)` batches. Each group's rows are
//! shuffled and dealt into the `B` batches in contiguous chunks whose sizes differ by at most
//! one, so every batch takes from each group in proportion to the group's size and every row
//! is used exactly once per epoch; nothing is dropped. The one-row remainders of the groups
//! are spread over the batches in turn so that batch sizes differ by at most one, hence every
//! batch has at most `batch_size` rows. If a group has fewer rows than there are batches,
//! its rows are reused (cycled in shuffled order) so that each batch still has one of them;
//! only then is a row used more than once. Rows inside a batch are shuffled.
//! Deterministic in the seed (ChaCha8); use [`epoch_seed`] to derive per-epoch seeds so a
//! resumed run reproduces the same batches.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::error::DataError;

/// A per-epoch seed from a run seed and an epoch number (SplitMix64 mixing).
pub fn epoch_seed(run_seed: u64, epoch: u64) -> u64 {
    let mut z = run_seed ^ epoch.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Group-stratified batch maker for one split (checks the inputs once).
#[derive(Debug, Clone)]
pub struct StratifiedBatches {
    members: Vec<Vec<usize>>,
    batch_size: usize,
    n: usize,
}

impl StratifiedBatches {
    /// `groups[i]` in `0..n_groups` is row `i`'s group. Errors on `batch_size < n_groups`,
    /// on a group id out of range and on a group with no rows.
    pub fn new(groups: &[u32], n_groups: usize, batch_size: usize) -> Result<Self, DataError> {
        if n_groups == 0 || batch_size < n_groups {
            return Err(DataError::InvalidArgument {
                what: "batch size".into(),
                expected: format!("at least n_groups = {n_groups} (>= 1), one row per group"),
                found: batch_size.to_string(),
            });
        }
        let mut members = vec![Vec::new(); n_groups];
        for (i, &g) in groups.iter().enumerate() {
            let slot = members
                .get_mut(g as usize)
                .ok_or_else(|| DataError::InvalidArgument {
                    what: format!("group of row {i}"),
                    expected: format!("a group id below {n_groups}"),
                    found: g.to_string(),
                })?;
            slot.push(i);
        }
        if let Some(g) = members.iter().position(|m| m.is_empty()) {
            return Err(DataError::InvalidArgument {
                what: "groups".into(),
                expected: format!("rows in each of the {n_groups} groups"),
                found: format!("no row in group {g}"),
            });
        }
        Ok(Self {
            members,
            batch_size,
            n: groups.len(),
        })
    }

    /// Number of batches per epoch.
    pub fn n_batches(&self) -> usize {
        self.n.div_ceil(self.batch_size).max(1)
    }

    /// The batches (row indices) of the epoch with this seed.
    pub fn epoch(&self, seed: u64) -> Vec<Vec<usize>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let nb = self.n_batches();
        let mut batches: Vec<Vec<usize>> = vec![Vec::new(); nb];
        let mut turn = 0usize; // next batch to receive a remainder row
        for m in &self.members {
            let mut rows = m.clone();
            rows.shuffle(&mut rng);
            if rows.len() < nb {
                for (b, batch) in batches.iter_mut().enumerate() {
                    batch.push(rows[b % rows.len()]);
                }
                continue;
            }
            let base = rows.len() / nb;
            let extra = rows.len() % nb;
            let mut sizes = vec![base; nb];
            for k in 0..extra {
                sizes[(turn + k) % nb] += 1;
            }
            turn = (turn + extra) % nb;
            let mut start = 0;
            for (batch, s) in batches.iter_mut().zip(sizes) {
                batch.extend_from_slice(&rows[start..start + s]);
                start += s;
            }
        }
        for b in &mut batches {
            b.shuffle(&mut rng);
        }
        batches
    }
}

/// One epoch of group-stratified batches; see the module documentation.
pub fn stratified_batches(
    groups: &[u32],
    n_groups: usize,
    batch_size: usize,
    seed: u64,
) -> Result<Vec<Vec<usize>>, DataError> {
    Ok(StratifiedBatches::new(groups, n_groups, batch_size)?.epoch(seed))
}

/// A group-stratified subsample of at most `max` rows (every group represented, each in
/// proportion to its size), fixed by `seed`, in increasing row order; every row when there are
/// at most `max`. It is the first batch of a [`StratifiedBatches`] epoch with batch size
/// `max`, so the same rules hold (a group with no row, or `max < n_groups`, is an error).
pub fn stratified_subsample(
    groups: &[u32],
    n_groups: usize,
    max: usize,
    seed: u64,
) -> Result<Vec<usize>, DataError> {
    if groups.len() <= max {
        return Ok((0..groups.len()).collect());
    }
    let mut first = StratifiedBatches::new(groups, n_groups, max)?
        .epoch(seed)
        .swap_remove(0);
    first.sort_unstable();
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsample_is_stratified_and_deterministic() {
        let groups: Vec<u32> = (0..1000).map(|i| u32::from(i % 10 == 0)).collect();
        let a = stratified_subsample(&groups, 2, 100, 5).unwrap();
        assert_eq!(a, stratified_subsample(&groups, 2, 100, 5).unwrap());
        assert!(a.len() <= 100 && a.len() >= 90);
        let ones = a.iter().filter(|&&i| groups[i] == 1).count();
        assert!((5..=15).contains(&ones), "{ones}");
        assert_eq!(
            stratified_subsample(&groups[..50], 2, 100, 5).unwrap(),
            (0..50).collect::<Vec<_>>()
        );
        // A group without rows is an error, not a silent fallback.
        assert!(stratified_subsample(&vec![0; 300], 2, 100, 5).is_err());
    }

    #[test]
    fn every_batch_has_every_group_and_rows_are_used_once() {
        // 70 / 25 / 5 rows in three groups, batch size 16 -> 7 batches.
        let groups: Vec<u32> = (0..100)
            .map(|i| {
                if i < 70 {
                    0
                } else if i < 95 {
                    1
                } else {
                    2
                }
            })
            .collect();
        let b = stratified_batches(&groups, 3, 16, 42).unwrap();
        assert_eq!(b.len(), 7);
        for batch in &b {
            assert!(
                batch.len() <= 16 && batch.len() >= 14,
                "size {}",
                batch.len()
            );
            for g in 0..3u32 {
                assert!(batch.iter().any(|&i| groups[i] == g), "group {g} missing");
            }
            // Proportional: group 0 gets 10 rows per batch, group 1 gets 3 or 4.
            assert_eq!(batch.iter().filter(|&&i| groups[i] == 0).count(), 10);
        }
        // Group 2 (5 rows < 7 batches) is cycled; the others are used exactly once.
        let mut seen = vec![0; 100];
        b.iter().flatten().for_each(|&i| seen[i] += 1);
        assert!(seen[..95].iter().all(|&c| c == 1));
        assert_eq!(seen[95..].iter().sum::<i32>(), 7);
    }

    #[test]
    fn exact_partition_and_determinism() {
        let groups: Vec<u32> = (0..103).map(|i| (i % 2) as u32).collect();
        let a = stratified_batches(&groups, 2, 10, 5).unwrap();
        assert_eq!(a.len(), 11);
        let mut all: Vec<usize> = a.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..103).collect::<Vec<_>>());
        let sizes: Vec<usize> = a.iter().map(Vec::len).collect();
        assert!(sizes.iter().all(|&s| s == 9 || s == 10), "{sizes:?}");
        assert_eq!(a, stratified_batches(&groups, 2, 10, 5).unwrap());
        assert_ne!(
            a,
            stratified_batches(&groups, 2, 10, epoch_seed(5, 1)).unwrap()
        );
        assert_ne!(epoch_seed(5, 0), epoch_seed(5, 1));
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(
            stratified_batches(&[0, 1], 2, 1, 0)
                .unwrap_err()
                .to_string()
                .contains("batch size")
        );
        assert!(
            stratified_batches(&[0, 3], 2, 4, 0)
                .unwrap_err()
                .to_string()
                .contains("row 1")
        );
        assert!(
            stratified_batches(&[0, 0], 2, 4, 0)
                .unwrap_err()
                .to_string()
                .contains("group 1")
        );
    }
}
