//! Fault injection for chaos runs: a share of k-NN searches fail on purpose, so a
//! soak exercises the fallback to the model and the circuit breaker the way a sick
//! index would, without a special build.
//!
//! It lives in the memory, so every search path sees it: tests switch it fully on
//! with [`super::Memory::set_fault_rate`], and a server sets a rate only if started
//! with `engine.fault_injection = true`, through `POST /v1/admin/fault/knn` (behind
//! the admin token). The draw is a counter through a mixing function: no lock, no
//! RNG state shared between request threads, and one relaxed load when the rate is
//! zero.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Parts per million in a rate of 1.0.
const PPM: u64 = 1_000_000;

/// The k-NN fault switch.
#[derive(Debug, Default)]
pub struct KnnFault {
    ppm: AtomicU32,
    draws: AtomicU64,
    injected: AtomicU64,
}

impl KnnFault {
    /// Sets the share of searches that fail, in `[0, 1]` (checked by the caller).
    pub fn set_rate(&self, rate: f64) {
        let ppm = (rate.clamp(0.0, 1.0) * PPM as f64).round() as u32;
        self.ppm.store(ppm, Ordering::Relaxed);
    }

    /// The current share of searches that fail.
    pub fn rate(&self) -> f64 {
        f64::from(self.ppm.load(Ordering::Relaxed)) / PPM as f64
    }

    /// Whether this search should fail; counts the ones that do.
    pub fn fire(&self) -> bool {
        let ppm = u64::from(self.ppm.load(Ordering::Relaxed));
        if ppm == 0 {
            return false;
        }
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        let fire = mix(n) % PPM < ppm;
        if fire {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
        fire
    }

    /// Searches failed on purpose so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }
}

/// SplitMix64's finaliser: consecutive counters land far apart.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_never_fires() {
        let f = KnnFault::default();
        assert!((0..10_000).all(|_| !f.fire()));
        assert_eq!(f.injected(), 0);
    }

    #[test]
    fn fires_at_about_the_rate_and_counts() {
        let f = KnnFault::default();
        f.set_rate(0.1);
        let fired = (0..100_000).filter(|_| f.fire()).count();
        assert!((9_000..11_000).contains(&fired), "fired {fired} of 100000");
        assert_eq!(f.injected(), fired as u64);
        f.set_rate(1.0);
        assert!((0..100).all(|_| f.fire()));
        f.set_rate(0.0);
        assert!(!f.fire());
        assert_eq!(f.rate(), 0.0);
    }
}
