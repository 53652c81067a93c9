//! The generation handoff between one worker and the next: where the next worker
//! starts, and which worker generation may publish (the *live* one, which the swap
//! task's fence admits; see `update::fence`).
//!
//! A generation stops being live the moment the server asks for its worker to be
//! replaced (a rejected version, a rollback, an operator's restart, shutdown), not
//! when the worker is gone: until then the old worker may still publish, and what
//! it publishes must already be refused. The next worker goes live once it has been
//! spawned on a newer generation. Two races are closed here, under one lock:
//! - a worker spawned while a replacement was being asked for (it may have read the
//!   start point from before the request) does not go live: the request, queued
//!   behind the spawn, replaces it in turn;
//! - a generation whose worker was replaced (or was being spawned when a replacement
//!   was asked for) never goes live again: a worker is not started on it (when no
//!   new ring generation could be created, the start counts as failed).
//!
//! A worker that dies on its own publishes nothing more, so its generation stays
//! live until its successor's spawn: what it published before dying may still serve.

use super::StartPoint;

/// The shared state of the handoff; the supervisor keeps it behind a mutex.
#[derive(Debug)]
pub(super) struct Handoff {
    /// Where the next worker starts.
    start: StartPoint,
    /// The generation whose versions may serve, if any.
    live: Option<u64>,
    /// The newest generation a worker was started on.
    newest: u64,
    /// Every generation at or below this had its worker replaced.
    retired_through: u64,
    /// Replacements asked for so far: the ticket a spawn takes with its start point.
    replacements: u64,
}

impl Handoff {
    /// Before the first worker: nothing is live.
    pub(super) fn new(start: StartPoint) -> Self {
        Self {
            start,
            live: None,
            newest: 0,
            retired_through: 0,
            replacements: 0,
        }
    }

    /// Where the next worker starts.
    pub(super) fn start(&self) -> StartPoint {
        self.start
    }

    /// The generation whose versions may serve.
    pub(super) fn live(&self) -> Option<u64> {
        self.live
    }

    /// A version was swapped in: the next worker starts from it, nothing ends.
    pub(super) fn advance(&mut self, point: StartPoint) {
        self.start = point;
    }

    /// The running worker is to be replaced (from `point`, when given): its
    /// generation, and every one a worker was started on, ends now, before the
    /// worker has stopped.
    pub(super) fn replace(&mut self, point: Option<StartPoint>) {
        if let Some(point) = point {
            self.start = point;
        }
        self.live = None;
        self.retired_through = self.newest;
        self.replacements += 1;
    }

    /// A worker is about to be spawned on `generation`: where it starts, and the
    /// ticket [`went_live`](Self::went_live) checks. `None` when the generation
    /// belongs to a replaced worker (no new ring could be made): it is not started.
    pub(super) fn begin(&mut self, generation: u64) -> Option<(StartPoint, u64)> {
        if generation <= self.retired_through {
            return None;
        }
        self.newest = self.newest.max(generation);
        Some((self.start, self.replacements))
    }

    /// The worker spawned with `ticket` runs on `generation`. It goes live unless a
    /// replacement was asked for since it took its start point; returns whether it
    /// did.
    pub(super) fn went_live(&mut self, ticket: u64, generation: u64) -> bool {
        if ticket != self.replacements {
            return false;
        }
        self.live = Some(generation);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: StartPoint = StartPoint {
        version: 3,
        floor: 30,
    };

    #[test]
    fn a_replacement_ends_the_generation_before_the_next_one_starts() {
        let mut h = Handoff::new(AT);
        assert_eq!(h.live(), None);
        let (point, ticket) = h.begin(1).unwrap();
        assert_eq!(point, AT);
        assert!(h.went_live(ticket, 1));
        assert_eq!(h.live(), Some(1));
        // A swap moves the start point and ends nothing.
        let later = StartPoint {
            version: 5,
            floor: 50,
        };
        h.advance(later);
        assert_eq!((h.start(), h.live()), (later, Some(1)));
        // A rejection: generation 1 ends at once, while its worker still runs.
        let back = StartPoint {
            version: 5,
            floor: 60,
        };
        h.replace(Some(back));
        assert_eq!((h.start(), h.live()), (back, None));
        // Generation 1 never runs again (no new ring could be made); its successor
        // does.
        assert_eq!(h.begin(1), None);
        let (point, ticket) = h.begin(2).unwrap();
        assert_eq!(point, back);
        assert!(h.went_live(ticket, 2));
        assert_eq!(h.live(), Some(2));
        // Shutdown or an operator's restart: no start point given, still an end.
        h.replace(None);
        assert_eq!((h.start(), h.live()), (back, None));
        assert_eq!(h.begin(2), None);
        assert!(h.begin(3).is_some());
    }

    #[test]
    fn a_worker_spawned_during_a_replacement_request_does_not_go_live() {
        let mut h = Handoff::new(AT);
        let (_, ticket) = h.begin(1).unwrap();
        assert!(h.went_live(ticket, 1));
        // The worker dies on its own: generation 1 stays live until the next spawn.
        let (stale_point, ticket) = h.begin(2).unwrap();
        assert_eq!(h.live(), Some(1));
        // A rollback is asked for between the spawn's read and its going live.
        let rolled = StartPoint {
            version: 1,
            floor: 30,
        };
        h.replace(Some(rolled));
        assert_eq!(stale_point, AT);
        assert!(!h.went_live(ticket, 2), "it read the start point of before");
        assert_eq!(h.live(), None);
        // Its generation is over too, though it never went live.
        assert_eq!(h.begin(2), None);
        // The queued request's worker reads the new point and goes live.
        let (point, ticket) = h.begin(3).unwrap();
        assert_eq!(point, rolled);
        assert!(h.went_live(ticket, 3));
        assert_eq!(h.live(), Some(3));
    }
}
