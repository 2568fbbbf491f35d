//! Which key and which value size each operation uses.
//!
//! Keys are `bench-<i>` with `i` below `--keys`, drawn uniformly or from a Zipfian
//! distribution (`rand_distr`'s [`Zipf`], exponent `--zipf-theta`). As in YCSB's
//! "scrambled Zipfian", the Zipfian rank is not the key: rank `r` (0 the hottest) goes
//! to key [`scramble`]`(r)`, a hash, so the hot keys lie all over the key space
//! instead of at its start. Unlike YCSB's hash-then-modulo, [`scramble`] is a
//! permutation of `0..keys`: no two ranks share a key, so the distribution's shares are
//! exactly the keys' shares.

use std::fmt;
use std::str::FromStr;

use rand::{Rng, RngExt};
use rand_distr::{Distribution, Zipf};

/// How keys are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyDistribution {
    /// Every key equally often.
    Uniform,
    /// Zipfian over the keys' ranks (exponent `--zipf-theta`), ranks scrambled to keys.
    Zipfian,
}

/// Draws the number `i` of the key `bench-<i>` of each operation.
#[derive(Debug)]
pub struct KeyChooser {
    keys: u64,
    zipf: Option<Zipf<f64>>,
}

impl KeyChooser {
    /// Over `keys` keys (at least one); `theta` is the Zipfian exponent (0 is uniform,
    /// YCSB uses 0.99).
    pub fn new(distribution: KeyDistribution, keys: u64, theta: f64) -> Result<Self, String> {
        let keys = keys.max(1);
        let zipf = match distribution {
            KeyDistribution::Uniform => None,
            KeyDistribution::Zipfian => Some(
                Zipf::new(keys as f64, theta)
                    .map_err(|e| format!("--zipf-theta {theta} over {keys} keys: {e}"))?,
            ),
        };
        Ok(KeyChooser { keys, zipf })
    }

    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match &self.zipf {
            None => rng.random_range(0..self.keys),
            Some(zipf) => {
                // Samples are 1..=keys as floats; rank 0 is the hottest.
                let rank = (zipf.sample(rng) as u64).clamp(1, self.keys) - 1;
                scramble(rank, self.keys)
            }
        }
    }
}

/// A hash of `rank` that is a permutation of `0..n`: an invertible mix of the bits
/// below the smallest power of two not under `n` (multiplications by odd numbers and
/// xor-shifts, each a bijection on those bits), repeated while the result is `n` or
/// more ("cycle walking", fewer than two rounds on average). Ranks `n` or more are
/// taken modulo `n` first.
pub fn scramble(rank: u64, n: u64) -> u64 {
    if n <= 1 {
        return 0;
    }
    let bits = 64 - (n - 1).leading_zeros();
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let shift = bits / 2 + 1;
    let mut x = rank % n;
    loop {
        for k in [
            0x9E37_79B9_7F4A_7C15u64,
            0xBF58_476D_1CE4_E5B9,
            0x94D0_49BB_1331_11EB,
        ] {
            x = x.wrapping_mul(k | 1) & mask;
            x ^= x >> shift;
            x = x.wrapping_add(k >> 7) & mask;
        }
        if x < n {
            return x;
        }
    }
}

/// `--value-size`: a size in bytes (`100`) or a range `min..max` (both included),
/// each value's size drawn uniformly from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueSize {
    pub min: usize,
    pub max: usize,
}

impl ValueSize {
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        if self.min == self.max {
            self.min
        } else {
            rng.random_range(self.min..=self.max)
        }
    }

    pub fn is_fixed(&self) -> bool {
        self.min == self.max
    }

    /// The mean size of the values.
    pub fn mean(&self) -> f64 {
        (self.min as f64 + self.max as f64) / 2.0
    }
}

impl FromStr for ValueSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let number = |s: &str| {
            s.trim().parse::<usize>().map_err(|_| {
                format!(
                    "`{text}` is not a size in bytes (`100`) or a range of sizes (`64..1024`, \
                     both ends included)"
                )
            })
        };
        let Some((min, max)) = text.split_once("..") else {
            let size = number(text)?;
            return Ok(ValueSize {
                min: size,
                max: size,
            });
        };
        let (min, max) = (number(min)?, number(max.strip_prefix('=').unwrap_or(max))?);
        if min > max {
            return Err(format!(
                "the range `{text}` is empty: its start {min} is above its end {max}"
            ));
        }
        Ok(ValueSize { min, max })
    }
}

impl fmt::Display for ValueSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_fixed() {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..{}", self.min, self.max)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    use std::collections::HashSet;

    /// The share of `draws` picks that fell on the 10 most picked keys, and those keys.
    fn hottest_ten(chooser: &KeyChooser, keys: u64, draws: usize) -> (f64, Vec<u64>) {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = vec![0u64; keys as usize];
        for _ in 0..draws {
            counts[chooser.pick(&mut rng) as usize] += 1;
        }
        let mut by_count: Vec<(u64, u64)> = counts
            .iter()
            .enumerate()
            .map(|(key, &n)| (n, key as u64))
            .collect();
        by_count.sort_unstable_by(|a, b| b.cmp(a));
        let top = &by_count[..10];
        let share = top.iter().map(|(n, _)| n).sum::<u64>() as f64 / draws as f64;
        (share, top.iter().map(|&(_, key)| key).collect())
    }

    #[test]
    fn zipfian_puts_most_operations_on_few_keys_spread_over_the_key_space() {
        let zipf = KeyChooser::new(KeyDistribution::Zipfian, 10_000, 0.99).unwrap();
        let (share, hottest) = hottest_ten(&zipf, 10_000, 200_000);
        // In theory (theta 0.99, 10,000 keys) the 10 hottest ranks get about 30%.
        assert!(share > 0.25 && share < 0.35, "top-10 share {share}");
        // Scrambled: the hot keys are not the first ones, nor next to each other.
        let (low, high) = (hottest.iter().min().unwrap(), hottest.iter().max().unwrap());
        assert!(high - low > 1_000, "hottest keys {hottest:?}");
        assert!(
            hottest.iter().filter(|&&k| k < 10).count() < 3,
            "{hottest:?}"
        );

        let uniform = KeyChooser::new(KeyDistribution::Uniform, 10_000, 0.99).unwrap();
        let (share, _) = hottest_ten(&uniform, 10_000, 200_000);
        assert!(share < 0.005, "uniform top-10 share {share}");
    }

    #[test]
    fn every_key_can_come_up_and_none_outside_the_range() {
        let mut rng = SmallRng::seed_from_u64(1);
        let zipf = KeyChooser::new(KeyDistribution::Zipfian, 5, 0.99).unwrap();
        let seen: HashSet<u64> = (0..10_000).map(|_| zipf.pick(&mut rng)).collect();
        assert_eq!(seen, (0..5).collect());
        let one = KeyChooser::new(KeyDistribution::Zipfian, 1, 0.99).unwrap();
        assert_eq!(one.pick(&mut rng), 0);
        assert!(KeyChooser::new(KeyDistribution::Zipfian, 10, -1.0).is_err());
        assert!(KeyChooser::new(KeyDistribution::Zipfian, 10, f64::NAN).is_err());
    }

    #[test]
    fn scrambling_is_a_permutation() {
        for n in [1u64, 2, 3, 7, 8, 9, 1000, 1024, 1025, 10_000] {
            let image: HashSet<u64> = (0..n).map(|r| scramble(r, n)).collect();
            assert_eq!(image.len() as u64, n, "n = {n}");
            assert!(image.iter().all(|&k| k < n), "n = {n}");
        }
        // Neighbouring ranks land far apart.
        assert!(scramble(0, 10_000).abs_diff(scramble(1, 10_000)) > 10);
        assert!(scramble(5, u64::MAX) < u64::MAX);
    }

    #[test]
    fn value_sizes_are_fixed_or_a_range_with_clear_errors() {
        assert_eq!(
            "100".parse::<ValueSize>(),
            Ok(ValueSize { min: 100, max: 100 })
        );
        assert_eq!(
            "64..1024".parse::<ValueSize>(),
            Ok(ValueSize { min: 64, max: 1024 })
        );
        assert_eq!(
            "64..=1024".parse::<ValueSize>(),
            Ok(ValueSize { min: 64, max: 1024 })
        );
        let empty = "1024..64".parse::<ValueSize>().unwrap_err();
        assert!(empty.contains("start 1024 is above its end 64"), "{empty}");
        for bad in ["", "abc", "64..", "..64", "-1", "1..2..3", "64-1024"] {
            let err = bad.parse::<ValueSize>().unwrap_err();
            assert!(err.contains("range of sizes"), "{bad}: {err}");
        }
        let mut rng = SmallRng::seed_from_u64(3);
        let range = ValueSize { min: 64, max: 70 };
        let sizes: HashSet<usize> = (0..1000).map(|_| range.pick(&mut rng)).collect();
        assert_eq!(sizes, (64..=70).collect());
        assert_eq!(range.to_string(), "64..70");
        assert_eq!(ValueSize { min: 9, max: 9 }.to_string(), "9");
    }
}
