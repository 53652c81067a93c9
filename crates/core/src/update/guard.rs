//! The quality guard: whether a candidate version may replace the serving one, judged
//! from what a comparison of the two found.
//!
//! One pure function, [`judge`], over plain data ([`Evidence`] and [`Rules`]): no I/O,
//! no alerts, no clock, nothing async, nothing from outside `std`. Whoever produces
//! versions can run it where they are produced (the server's swap task today, a
//! trainer elsewhere tomorrow) and get the same answer from the same numbers; the
//! caller gathers the evidence and acts on the [`Verdict`].
//!
//! The rules, in the order they are heard:
//! 1. **Close**: a mean `KL(p_serving ‖ p_candidate)` over the probe at or below
//!    `kl_reject_threshold` is accepted.
//! 2. **Learned**: a larger move is accepted when the candidate answers the probe's
//!    client-labelled rows better beyond chance: a one-sided sign test over the rows
//!    where the two disagree ([`significantly_better`]). A large move that answers
//!    recent labels better is what learning looks like (a fresh model's first
//!    versions move a lot, and so does every version right after a drift).
//! 3. **Young**: a server that started from an untrained (`init-model`) model accepts
//!    it while it has received fewer than `unguarded_labels` labels: the weights have
//!    nothing to protect yet, and with sparse labels the probe holds too few of them
//!    for rule 2 to be heard.
//! 4. Anything else is **rejected**. A KL that is not a number counts as a large move.
//!
//! Whether the candidate may be judged at all (who published it, from which parent)
//! is the fence's question, asked before this one: see [`super::fence`].

/// The one-sided significance at which a candidate's accuracy on the labelled probe
/// rows overrules the KL check.
pub const SIGN_TEST_P: f64 = 0.05;

/// Labelled probe rows on which the two versions must disagree before the sign test
/// is heard at all. The labelled rows are the newest labels, which the candidate has
/// just trained on, so a handful won says little; ten is still within reach right
/// after a drift alarm (the soak's 0.73 against 0.32 on 22 rows is about 10 against 1).
pub const MIN_DISAGREEMENTS: usize = 10;

/// What a comparison of the candidate with the serving version found, and how far
/// the server has come: everything [`judge`] reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evidence {
    /// Mean `KL(p_serving ‖ p_candidate)` over the probe, in nats.
    pub kl: f64,
    /// Labelled probe rows only the candidate answers right.
    pub new_only: usize,
    /// Labelled probe rows only the serving version answers right.
    pub old_only: usize,
    /// Whether the server started from an untrained model.
    pub started_fresh: bool,
    /// Client labels the server has received since it started.
    pub labels: u64,
}

/// The guard's settings (`[swap]` in the config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// Nats of mean KL above which a move needs an excuse (rules 2 and 3).
    pub kl_reject_threshold: f64,
    /// Labels below which a server started fresh accepts any move (rule 3).
    pub unguarded_labels: u64,
}

/// The guard's answer, naming the rule that decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted: the candidate moved no further than the threshold.
    Close,
    /// Accepted: it moved further, but answers the labelled rows better beyond chance.
    Learned,
    /// Accepted: it moved further, but the model is too young to guard.
    Young,
    /// Rejected: it moved further than the threshold with neither excuse.
    Reject,
}

impl Verdict {
    /// Whether the candidate may serve.
    pub fn accepts(self) -> bool {
        self != Self::Reject
    }
}

/// Judges a candidate from the evidence; see the module docs for the rules.
pub fn judge(evidence: &Evidence, rules: &Rules) -> Verdict {
    if evidence.kl <= rules.kl_reject_threshold {
        Verdict::Close
    } else if significantly_better(evidence.new_only, evidence.old_only) {
        Verdict::Learned
    } else if evidence.started_fresh && evidence.labels < rules.unguarded_labels {
        Verdict::Young
    } else {
        Verdict::Reject
    }
}

/// True when a version right on `new_only` labelled rows where the serving one is
/// wrong, and wrong on `old_only` where it is right, is better beyond chance: a
/// one-sided sign test over the rows where the two disagree. The rows where both are
/// right or both wrong say nothing about which is better.
///
/// A fixed row count did not do: right after a drift alarm the memory, and so the
/// probe, keeps only its newest experiences, and a version that had learned the new
/// concept (0.73 against 0.32 on 22 labelled rows, in the 1-hour soak) was rejected
/// for having fewer than 32 rows, its updates thrown away with it.
pub fn significantly_better(new_only: usize, old_only: usize) -> bool {
    let n = new_only + old_only;
    if new_only <= old_only || n < MIN_DISAGREEMENTS {
        return false;
    }
    // P(X >= new_only) for X ~ Binomial(n, 1/2), term by term: C(n, k) / 2^n, in
    // logarithms so that 2^-n cannot underflow (it would past 1074 rows, and a zero
    // tail would call any lead significant).
    let mut ln_term = n as f64 * 0.5f64.ln();
    let mut tail = 0.0;
    for k in 0..=n {
        if k >= new_only {
            tail += ln_term.exp();
        }
        ln_term += ((n - k) as f64 / (k + 1) as f64).ln();
    }
    tail < SIGN_TEST_P
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        kl_reject_threshold: 1.0,
        unguarded_labels: 1_000,
    };

    /// A candidate that moved `kl` with `new_only`/`old_only` disagreements, on a
    /// server that `fresh` started untrained and has `labels` labels.
    fn ev(kl: f64, new_only: usize, old_only: usize, fresh: bool, labels: u64) -> Evidence {
        Evidence {
            kl,
            new_only,
            old_only,
            started_fresh: fresh,
            labels,
        }
    }

    #[test]
    fn each_rule_decides_at_its_boundary() {
        use Verdict::*;
        let table: &[(&str, Evidence, Verdict)] = &[
            // Rule 1: the threshold itself is close enough; just above it is not.
            ("no move", ev(0.0, 0, 0, false, 5_000), Close),
            ("at the threshold", ev(1.0, 0, 0, false, 5_000), Close),
            ("just above", ev(1.0 + 1e-9, 0, 0, false, 5_000), Reject),
            ("far", ev(50.0, 0, 0, false, 5_000), Reject),
            ("not a number", ev(f64::NAN, 0, 0, false, 5_000), Reject),
            ("infinite", ev(f64::INFINITY, 0, 0, false, 5_000), Reject),
            // Close wins over the other excuses when several hold.
            ("close and better", ev(0.5, 20, 0, true, 0), Close),
            // Rule 2: ten disagreements all won are heard, nine are not.
            ("learned, 10 to 0", ev(5.0, 10, 0, false, 5_000), Learned),
            ("too few, 9 to 0", ev(5.0, 9, 0, false, 5_000), Reject),
            ("learned, 10 to 1", ev(5.0, 10, 1, false, 5_000), Learned),
            ("chance, 8 to 2", ev(5.0, 8, 2, false, 5_000), Reject),
            ("worse, 3 to 7", ev(5.0, 3, 7, false, 5_000), Reject),
            // Learned is named before young when both hold.
            ("learned and young", ev(5.0, 10, 0, true, 0), Learned),
            // Rule 3: fresh and one label short of the allowance is young; at the
            // allowance it is guarded; a pretrained start is never young.
            ("young, no labels", ev(5.0, 0, 0, true, 0), Young),
            ("young, one short", ev(5.0, 0, 0, true, 999), Young),
            ("grown up", ev(5.0, 0, 0, true, 1_000), Reject),
            ("pretrained", ev(5.0, 0, 0, false, 0), Reject),
            ("young and worse", ev(5.0, 0, 9, true, 10), Young),
        ];
        for (name, evidence, expected) in table {
            assert_eq!(judge(evidence, &RULES), *expected, "{name}: {evidence:?}");
            assert_eq!(judge(evidence, &RULES).accepts(), *expected != Reject);
        }
        // No allowance at all: a fresh server is guarded from its first label.
        let strict = Rules {
            unguarded_labels: 0,
            ..RULES
        };
        assert_eq!(judge(&ev(5.0, 0, 0, true, 0), &strict), Reject);
    }

    #[test]
    fn a_sign_test_decides_when_accuracy_overrules_the_kl_check() {
        // Nine rows for the new version and none against (p = 1/512) are still too
        // few disagreements to be heard; ten are.
        assert!(!significantly_better(9, 0));
        assert!(significantly_better(10, 0));
        // The soak's case: on 22 rows, 0.73 against 0.32 is about 10 rows against 1
        // (p = 0.006).
        assert!(significantly_better(10, 1));
        // Ten disagreements, 8 against 2: p = 0.055, not enough.
        assert!(!significantly_better(8, 2));
        // A lead that chance explains: 9 against 6 (p = 0.30).
        assert!(!significantly_better(9, 6));
        assert!(!significantly_better(0, 0));
        assert!(!significantly_better(3, 7));
        // Large counts stay finite: 140 against 116 of 256 (p = 0.075) is not enough,
        // 145 against 111 (p = 0.02) is.
        assert!(!significantly_better(140, 116));
        assert!(significantly_better(145, 111));
        // Past 1074 rows 2^-n underflows; the tail must not. 1520 against 1480 is a
        // lead of 40 in 3000 (p = 0.24).
        assert!(!significantly_better(1_520, 1_480));
        assert!(significantly_better(1_560, 1_440));
        assert!(!significantly_better(538, 537), "n = 1075, where 2^-n is 0");
    }
}
