//! HyperLogLog sketches of distinct visitors, stored per rollup bucket and merged at query time.
//!
//! 2^12 registers: standard error 1.04 / √4096 ≈ **1.6 %** (about 95 % of estimates within
//! ±3.3 %, 99.7 % within ±4.9 %). The estimate uses Ertl's improved raw estimator ("New
//! cardinality estimation algorithms for HyperLogLog sketches", 2017), which has no bias at small
//! or middle cardinalities and needs no empirical bias tables; below a few hundred distinct
//! values it is exact or off by one in practice (linear counting), which the unit tests check.
//!
//! Written here rather than taken from a crate because what we need is a *storage format*: a
//! sketch lives as bytes in a SQLite row, is read and merged straight from those bytes millions of
//! times per dashboard, and must decode the same in every future version. The crates we looked
//! at (`hyperloglogplus`, `hyperloglog`) serialize through serde into their in-memory layout,
//! hash with a caller-supplied `BuildHasher` (the std one is not stable across releases) and
//! merge only sketch-to-sketch after deserializing. The format here:
//!
//! - sparse: `0x01` then `(register: u16 LE, rank: u8)` per non-zero register, ascending;
//! - dense: `0x02` then 4,096 register bytes.
//!
//! A sketch stays sparse while that is smaller (up to 1,365 registers set, i.e. roughly that
//! many visitors), so an hour of a rarely seen page costs a few bytes, not 4 KiB.
//!
//! Hash: 64-bit FNV-1a over the value's bytes followed by MurmurHash3's 64-bit finalizer (FNV
//! alone mixes its last bytes poorly into the high bits HLL reads). Fixed here forever: stored
//! sketches depend on it.

/// Register index bits.
const P: u32 = 12;
/// Registers.
const M: usize = 1 << P;
/// Largest rank a register can hold: 64 − P + 1.
const Q: usize = 64 - P as usize;
const SPARSE: u8 = 1;
const DENSE: u8 = 2;
/// Beyond this many registers the dense form is smaller.
const SPARSE_MAX: usize = M / 3;

/// The stable 64-bit hash sketches are built from.
pub fn hash(value: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in value.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[derive(Debug, Clone, PartialEq)]
enum Registers {
    /// Non-zero registers `(index, rank)`, sorted by index.
    Sparse(Vec<(u16, u8)>),
    Dense(Box<[u8; M]>),
}

/// A HyperLogLog sketch with 4,096 registers.
#[derive(Debug, Clone, PartialEq)]
pub struct Sketch(Registers);

impl Default for Sketch {
    fn default() -> Self {
        Sketch(Registers::Sparse(Vec::new()))
    }
}

impl Sketch {
    pub fn new() -> Sketch {
        Sketch::default()
    }

    pub fn insert(&mut self, value: &str) {
        self.insert_hash(hash(value));
    }

    pub fn insert_hash(&mut self, h: u64) {
        let index = (h >> (64 - P)) as u16;
        // Rank of the first 1 bit in the remaining 52 bits (a sentinel bit caps it at Q + 1).
        let rank = ((h << P) | (1 << (P - 1))).leading_zeros() as u8 + 1;
        self.set(index, rank);
    }

    fn set(&mut self, index: u16, rank: u8) {
        match &mut self.0 {
            Registers::Dense(r) => {
                let slot = &mut r[usize::from(index)];
                *slot = (*slot).max(rank);
            }
            Registers::Sparse(entries) => {
                match entries.binary_search_by_key(&index, |(i, _)| *i) {
                    Ok(at) => entries[at].1 = entries[at].1.max(rank),
                    Err(at) => entries.insert(at, (index, rank)),
                }
                if entries.len() > SPARSE_MAX {
                    self.densify();
                }
            }
        }
    }

    fn densify(&mut self) {
        if let Registers::Sparse(entries) = &self.0 {
            let mut dense = Box::new([0u8; M]);
            for (i, r) in entries {
                dense[usize::from(*i)] = *r;
            }
            self.0 = Registers::Dense(dense);
        }
    }

    pub fn merge(&mut self, other: &Sketch) {
        match &other.0 {
            Registers::Sparse(entries) => {
                for (i, r) in entries {
                    self.set(*i, *r);
                }
            }
            Registers::Dense(theirs) => {
                self.densify();
                if let Registers::Dense(ours) = &mut self.0 {
                    for (a, b) in ours.iter_mut().zip(theirs.iter()) {
                        *a = (*a).max(*b);
                    }
                }
            }
        }
    }

    /// Merges a stored sketch (see [`Sketch::to_bytes`]) without building it first.
    pub fn merge_bytes(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match bytes.split_first() {
            None => Ok(()),
            Some((&SPARSE, rest)) => {
                anyhow::ensure!(rest.len() % 3 == 0, "corrupt sparse sketch");
                for entry in rest.chunks_exact(3) {
                    let index = u16::from_le_bytes([entry[0], entry[1]]);
                    anyhow::ensure!(usize::from(index) < M, "corrupt sparse sketch");
                    self.set(index, entry[2]);
                }
                Ok(())
            }
            Some((&DENSE, rest)) => {
                anyhow::ensure!(rest.len() == M, "corrupt dense sketch");
                self.densify();
                if let Registers::Dense(ours) = &mut self.0 {
                    for (a, b) in ours.iter_mut().zip(rest) {
                        *a = (*a).max(*b);
                    }
                }
                Ok(())
            }
            Some((tag, _)) => anyhow::bail!("unknown sketch format {tag}"),
        }
    }

    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<Sketch> {
        let mut sketch = Sketch::new();
        sketch.merge_bytes(bytes)?;
        Ok(sketch)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        match &self.0 {
            Registers::Sparse(entries) => {
                let mut out = Vec::with_capacity(1 + entries.len() * 3);
                out.push(SPARSE);
                for (i, r) in entries {
                    out.extend_from_slice(&i.to_le_bytes());
                    out.push(*r);
                }
                out
            }
            Registers::Dense(r) => {
                let mut out = Vec::with_capacity(1 + M);
                out.push(DENSE);
                out.extend_from_slice(&r[..]);
                out
            }
        }
    }

    /// The estimated number of distinct values inserted (Ertl 2017, algorithm 6).
    pub fn estimate(&self) -> f64 {
        let mut histogram = [0u32; Q + 2];
        match &self.0 {
            Registers::Sparse(entries) => {
                histogram[0] = (M - entries.len()) as u32;
                for (_, r) in entries {
                    histogram[usize::from(*r).min(Q + 1)] += 1;
                }
            }
            Registers::Dense(r) => {
                for v in r.iter() {
                    histogram[usize::from(*v).min(Q + 1)] += 1;
                }
            }
        }
        let m = M as f64;
        let mut z = m * tau(1.0 - f64::from(histogram[Q + 1]) / m);
        for k in (1..=Q).rev() {
            z += f64::from(histogram[k]);
            z *= 0.5;
        }
        z += m * sigma(f64::from(histogram[0]) / m);
        let alpha_inf = 1.0 / (2.0 * std::f64::consts::LN_2);
        alpha_inf * m * m / z
    }

    /// The estimate rounded to a count.
    pub fn count(&self) -> i64 {
        self.estimate().round() as i64
    }
}

fn sigma(x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let (mut x, mut y, mut z) = (x, 1.0, x);
    loop {
        x *= x;
        let previous = z;
        z += x * y;
        y += y;
        if previous == z {
            return z;
        }
    }
}

fn tau(x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let (mut x, mut y, mut z) = (x, 1.0, 1.0 - x);
    loop {
        x = x.sqrt();
        let previous = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if previous == z {
            return z / 3.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sketch_of(range: std::ops::Range<u64>) -> Sketch {
        let mut s = Sketch::new();
        for i in range {
            s.insert(&format!("{i}.{}", i.wrapping_mul(2_654_435_761)));
        }
        s
    }

    #[test]
    fn small_counts_are_exact() {
        for n in [0u64, 1, 2, 3, 10, 50, 100] {
            assert_eq!(sketch_of(0..n).count(), n as i64, "{n}");
        }
        let mut s = sketch_of(0..3);
        s.insert("0.0");
        assert_eq!(s.count(), 3, "a repeated value counts once");
    }

    #[test]
    fn estimates_stay_within_the_stated_error_against_exact_counts() {
        // Three standard errors (4.9 %) at every scale, sparse and dense, across the range where
        // the classic estimator needs bias correction (2.5 m – 5 m ≈ 10k – 20k).
        for n in [500u64, 1_000, 5_000, 12_000, 20_000, 100_000, 1_000_000] {
            let estimate = sketch_of(0..n).estimate();
            let error = (estimate - n as f64).abs() / n as f64;
            assert!(
                error < 0.049,
                "{n}: estimate {estimate:.0}, error {error:.4}"
            );
        }
    }

    #[test]
    fn merging_is_a_union_and_survives_the_byte_form() {
        let a = sketch_of(0..30_000);
        let b = sketch_of(20_000..50_000);
        let small = sketch_of(45_000..45_100);
        let mut merged = Sketch::new();
        for part in [&a, &b, &small] {
            merged.merge_bytes(&part.to_bytes()).unwrap();
        }
        let mut direct = a.clone();
        direct.merge(&b);
        direct.merge(&small);
        assert_eq!(merged, direct);
        assert_eq!(merged, sketch_of(0..50_000), "union of the registers");
        let error = (merged.estimate() - 50_000.0).abs() / 50_000.0;
        assert!(error < 0.049, "{error}");
        assert_eq!(Sketch::from_bytes(&small.to_bytes()).unwrap(), small);
        assert!(small.to_bytes().len() < 400, "small sketches stay sparse");
        assert_eq!(a.to_bytes().len(), 1 + M);
    }

    #[test]
    fn corrupt_bytes_are_errors_not_panics() {
        assert!(Sketch::from_bytes(&[9]).is_err());
        assert!(Sketch::from_bytes(&[SPARSE, 1]).is_err());
        assert!(Sketch::from_bytes(&[SPARSE, 0xff, 0xff, 1]).is_err());
        assert!(Sketch::from_bytes(&[DENSE, 1, 2]).is_err());
        assert_eq!(Sketch::from_bytes(&[]).unwrap(), Sketch::new());
    }

    #[test]
    fn the_hash_is_fixed() {
        // Stored sketches depend on these exact values.
        assert_eq!(hash(""), 0xefd0_1f60_ba99_2926);
        assert_eq!(hash("1.1"), 0xe31e_e399_c088_27c6);
    }
}
