//! The fence: which published versions are judged at all, decided from where they
//! came from alone.
//!
//! Every worker runs under a ring generation the supervisor gives it, and stamps that
//! generation into every checkpoint it publishes, with the version it trained from
//! (`parent_version`) and the generation that published that parent
//! ([`Provenance`]). The supervisor names one *live* generation: the worker it runs
//! and has not been asked to replace. The moment a replacement is asked for (a
//! rejected version, a rollback, an operator's restart, shutdown) there is none,
//! until the next worker, on a new ring generation, has started; a generation never
//! comes back. The rule is one comparison:
//!
//! ```text
//! admit(v)  ⇔  v.generation = live  ∧  (v.parent = serving  ∨  v.parent_generation = live)
//! ```
//!
//! **Why the generation.** A worker being replaced can still publish until it is
//! gone, on top of whatever it was training, and a version trained on a rejected one
//! carries the rejected change with it whatever its own KL says. Its generation is
//! no longer live, so it is refused without a comparison and without a second
//! restart; its replacement relearns from the WAL whatever the serving version has
//! not learned.
//!
//! **Which parents the server knows.** Two, and no others:
//! - the serving version: the start point the live worker was given is the version
//!   serving when it started, so its first publication names it;
//! - a version the live generation published itself. The swap task reads only the
//!   newest announcement, so a worker that publishes twice between two looks hands
//!   over a version whose parent the server never loaded. That parent is still known:
//!   the live worker's whole line runs from the start point the server chose, each
//!   version trained from the one before, and none of it was rejected (a rejection
//!   ends the generation).
//!
//! A version the server once served or accepted and has since left (a rollback's
//! origin) is not known: training on it would bring back what was left, which is
//! why "ever accepted" is not the rule. A version of the live generation whose parent
//! is unknown means the live worker's line has left the server's; it is refused and
//! the caller ends the generation (restarts the worker), since the line's later
//! versions would name a parent of the live generation and pass.
//!
//! Generation 0 is *unknown*: the seed checkpoint the server writes itself and every
//! checkpoint written before generations were stamped. It never is live (the first
//! ring is generation 1), so such a version is never admitted; it still loads as the
//! serving version, a worker's start point and a rollback target. Generations count
//! per server process: a previous process's workers die with it, and the swap task
//! only considers versions announced on its own process's rings.
//!
//! Pure and `std`-only, like [`super::guard`], so that it can run wherever versions
//! are produced or taken into service.

/// The generation of a checkpoint that says none.
pub const UNKNOWN_GENERATION: u64 = 0;

/// Where a version came from, as its checkpoint's metadata says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Provenance {
    /// The version itself.
    pub version: u64,
    /// The version it was trained from, when it says.
    pub parent: Option<u64>,
    /// The ring generation of the worker that published it ([`UNKNOWN_GENERATION`]
    /// when it says none).
    pub generation: u64,
    /// The generation that published `parent` ([`UNKNOWN_GENERATION`] for the seed,
    /// an unstamped checkpoint, or when it says none).
    pub parent_generation: u64,
    /// The last update sequence number it has learned (0 when it says none).
    pub applied_seq: u64,
}

/// What the fence says about a published version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Published by the live generation from a known parent: judge it.
    Admit,
    /// Published by a generation that is not live (replaced, being replaced, or
    /// unknown): refuse it; nothing more is needed, its worker is gone or going.
    NotLive,
    /// Published by the live generation from a parent the server does not know:
    /// refuse it and end the generation.
    UnknownParent,
}

/// The fence's rule (see the module docs). `live` is the supervisor's live
/// generation, `serving` the version serving now.
pub fn admit(version: &Provenance, live: Option<u64>, serving: u64) -> Admission {
    let live = live.filter(|&g| g != UNKNOWN_GENERATION);
    if live != Some(version.generation) {
        return Admission::NotLive;
    }
    let known = version.parent == Some(serving) || Some(version.parent_generation) == live;
    if version.parent.is_some() && known {
        Admission::Admit
    } else {
        Admission::UnknownParent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(generation: u64, parent: Option<u64>, parent_generation: u64) -> Provenance {
        Provenance {
            version: 20,
            parent,
            generation,
            parent_generation,
            applied_seq: 100,
        }
    }

    #[test]
    fn only_the_live_generation_from_a_known_parent_is_admitted() {
        use Admission::*;
        // Serving 10; the live generation is 3 unless a row says otherwise.
        let table: &[(&str, Provenance, Option<u64>, Admission)] = &[
            // The common case: trained from the serving version.
            ("from serving", v(3, Some(10), 2), Some(3), Admit),
            // The serving version came from this generation itself.
            ("from serving, same gen", v(3, Some(10), 3), Some(3), Admit),
            // Two publications between looks: the parent was never loaded, but the
            // live generation published it.
            ("from a skipped one", v(3, Some(15), 3), Some(3), Admit),
            // The old worker's late publication after a restart was asked for, before
            // and after the new worker went live.
            ("old gen, replacing", v(3, Some(10), 3), None, NotLive),
            ("old gen, replaced", v(3, Some(10), 3), Some(4), NotLive),
            (
                "old gen on a rejected one",
                v(3, Some(15), 3),
                Some(4),
                NotLive,
            ),
            // A generation from the future is not live either.
            ("newer gen", v(5, Some(10), 5), Some(4), NotLive),
            // Unstamped checkpoints (and the seed) are never admitted, even if
            // something claimed generation 0 were live.
            ("unknown gen", v(0, Some(10), 0), Some(3), NotLive),
            (
                "unknown gen, zero live",
                v(0, Some(10), 0),
                Some(0),
                NotLive,
            ),
            ("no worker", v(3, Some(10), 2), None, NotLive),
            // Live generation, but a parent the server does not know: a version it
            // left (rejected, or rolled back from), published by an older generation.
            (
                "from a left version",
                v(4, Some(15), 3),
                Some(4),
                UnknownParent,
            ),
            (
                "from an older kept one",
                v(4, Some(7), 2),
                Some(4),
                UnknownParent,
            ),
            ("no parent", v(4, None, 4), Some(4), UnknownParent),
            (
                "no parent, old parent gen",
                v(4, None, 0),
                Some(4),
                UnknownParent,
            ),
        ];
        for (name, version, live, expected) in table {
            assert_eq!(admit(version, *live, 10), *expected, "{name}: {version:?}");
        }
    }
}
