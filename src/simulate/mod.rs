//! Simulation: the synthetic drifting task (the chaos driver comes later).
pub mod stream;
