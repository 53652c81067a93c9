//! Helpers shared by the engine's unit tests.

/// A deterministic uniform draw in [0, 1) (a 64-bit LCG's high bits): the voters'
/// tests replay the same streams on every run without a random-number crate.
pub fn uniform(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed;
    move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
        (state >> 40) as f32 / (1u64 << 24) as f32
    }
}
