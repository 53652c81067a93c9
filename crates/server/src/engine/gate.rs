//! The confidence gate and the drift detector that can close it.
//!
//! A confident answer (`max p ≥ confidence_threshold`) becomes a pseudo-labelled
//! experience. Right after an abrupt drift, though, confident answers are confidently
//! wrong, and learning from them digs the hole deeper. So a Page-Hinkley test watches
//! the error rate on *labelled* feedback; when it alarms, pseudo-labels pause for the
//! next `drift_pause_labels` labelled samples and the test restarts.

use parking_lot::Mutex;

/// Page-Hinkley test for an increase in the mean of a stream (here: 0/1 errors).
///
/// `m_t = Σ (x_i − mean_i − δ)`, `M_t = min m_t`; alarm when `m_t − M_t > λ`.
#[derive(Debug, Clone)]
pub struct PageHinkley {
    delta: f64,
    threshold: f64,
    /// Samples needed before an alarm can fire, so the running mean is meaningful.
    min_samples: u64,
    n: u64,
    mean: f64,
    cumulative: f64,
    minimum: f64,
}

impl PageHinkley {
    /// A detector with tolerance `delta` and alarm threshold `threshold`.
    pub fn new(delta: f64, threshold: f64) -> Self {
        Self {
            delta,
            threshold,
            min_samples: 30,
            n: 0,
            mean: 0.0,
            cumulative: 0.0,
            minimum: 0.0,
        }
    }

    /// Adds one observation; returns true when it raises an alarm (and resets).
    pub fn observe(&mut self, x: f64) -> bool {
        self.n += 1;
        self.mean += (x - self.mean) / self.n as f64;
        self.cumulative += x - self.mean - self.delta;
        self.minimum = self.minimum.min(self.cumulative);
        if self.n >= self.min_samples && self.cumulative - self.minimum > self.threshold {
            self.reset();
            return true;
        }
        false
    }

    fn reset(&mut self) {
        self.n = 0;
        self.mean = 0.0;
        self.cumulative = 0.0;
        self.minimum = 0.0;
    }
}

#[derive(Debug)]
struct GateState {
    detector: PageHinkley,
    /// Labelled samples left before pseudo-labels resume; 0 = open.
    paused_for: u64,
    drifts: u64,
}

/// Decides whether a confident answer may become a pseudo-label.
#[derive(Debug)]
pub struct ConfidenceGate {
    threshold: f32,
    enabled: bool,
    pause_labels: u64,
    /// One short critical section per labelled feedback or gate check; never held
    /// across an await.
    state: Mutex<GateState>,
}

impl ConfidenceGate {
    /// A gate at `threshold`, closed entirely when `enabled` is false.
    pub fn new(threshold: f32, enabled: bool, delta: f64, ph_threshold: f64, pause: u64) -> Self {
        Self {
            threshold,
            enabled,
            pause_labels: pause,
            state: Mutex::new(GateState {
                detector: PageHinkley::new(delta, ph_threshold),
                paused_for: 0,
                drifts: 0,
            }),
        }
    }

    /// True when an answer of confidence `c` should be learned as a pseudo-label.
    pub fn admits(&self, confidence: f32) -> bool {
        self.enabled && confidence >= self.threshold && !self.drift_active()
    }

    /// True while pseudo-labels are paused after a detected drift.
    pub fn drift_active(&self) -> bool {
        self.state.lock().paused_for > 0
    }

    /// Drifts detected so far.
    pub fn drifts(&self) -> u64 {
        self.state.lock().drifts
    }

    /// Feeds one labelled outcome; returns true when it reveals a drift.
    pub fn observe_label(&self, was_error: bool) -> bool {
        let mut s = self.state.lock();
        s.paused_for = s.paused_for.saturating_sub(1);
        let alarm = s.detector.observe(if was_error { 1.0 } else { 0.0 });
        if alarm {
            s.paused_for = self.pause_labels;
            s.drifts += 1;
        }
        alarm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_hinkley_is_quiet_on_a_stable_stream_and_alarms_on_a_jump() {
        let mut ph = PageHinkley::new(0.005, 30.0);
        // 10% errors, deterministic pattern.
        for i in 0..2000 {
            assert!(
                !ph.observe(if i % 10 == 0 { 1.0 } else { 0.0 }),
                "false alarm at {i}"
            );
        }
        // Error rate jumps to 80%.
        let alarm_at = (0..500).find(|i| ph.observe(if i % 5 == 0 { 0.0 } else { 1.0 }));
        let at = alarm_at.expect("drift detected");
        assert!(at < 100, "detected after {at} samples");
    }

    #[test]
    fn gate_pauses_after_drift_then_reopens() {
        let gate = ConfidenceGate::new(0.7, true, 0.005, 5.0, 10);
        assert!(gate.admits(0.9));
        assert!(!gate.admits(0.6), "below threshold");
        for _ in 0..30 {
            gate.observe_label(false);
        }
        let mut alarmed = false;
        for _ in 0..100 {
            if gate.observe_label(true) {
                alarmed = true;
                break;
            }
        }
        assert!(alarmed);
        assert_eq!(gate.drifts(), 1);
        assert!(!gate.admits(0.99), "paused after drift");
        for _ in 0..10 {
            gate.observe_label(false);
        }
        assert!(gate.admits(0.99), "reopened after the pause");
    }

    #[test]
    fn disabled_gate_admits_nothing() {
        let gate = ConfidenceGate::new(0.7, false, 0.005, 30.0, 10);
        assert!(!gate.admits(1.0));
    }
}
