//! The pending log (`state_dir/pending/`): every prediction a client may still
//! label, and every label that joined one, so that a restarted server joins a late
//! label to the prediction it answered before the restart, and never twice.
//!
//! The WAL writer thread owns it beside the WAL; records are the engine's
//! (`crate::engine::pending::log`), stored in the WAL's own segment format, so a
//! torn tail or a damaged record is cut and reported the same way.
//!
//! - **Group commit, on a timer.** A prediction is appended to a buffer and written
//!   at most `commit_interval` later (one write(2) for all of them), not per group
//!   of updates: predictions outnumber updates, and nobody waits for them. So a
//!   SIGKILL of the server loses at most the predictions of the last
//!   `commit_interval`; a machine crash, what the fsync policy leaves (the WAL's).
//! - **Answers commit with their label.** The record saying a label joined a
//!   prediction is written before that label is acknowledged. A kill between the
//!   label's WAL commit and this record (or a failed write of it, logged) is
//!   covered at start: a prediction whose label the WAL holds after the memory
//!   snapshot's position is not restored (`app::restore`).
//! - **Never crowding labels out.** Predictions reach the writer through the WAL's
//!   queue but may fill at most half of it; past that one is dropped and counted
//!   (`pending_log.dropped` in `/v1/status`), and its label will answer 404 after
//!   a restart.
//! - **Bounded.** Whole segments are deleted once every prediction in them has
//!   expired (older than the TTL) or been pushed out of the pending map by
//!   `capacity` newer ones.

use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::engine::PendingPrediction;
use crate::engine::pending::log::{self, Record};
use crate::wal::{OpenReport, Wal, WalConfig, WalError};

/// A position in the log and what had been logged by then, to decide truncation.
#[derive(Debug, Clone, Copy)]
struct Mark {
    seq: u64,
    at: Instant,
    predictions: u64,
}

/// How often a truncation mark is taken.
const MARK_EVERY: Duration = Duration::from_secs(1);

/// The log's writer side, owned by the WAL writer thread.
#[derive(Debug)]
pub struct PendingLog {
    wal: Wal,
    commit_interval: Duration,
    ttl: Duration,
    capacity: u64,
    /// When the oldest uncommitted record was appended.
    buffered_since: Option<Instant>,
    marks: VecDeque<Mark>,
    /// Predictions appended so far.
    predictions: u64,
}

/// What [`PendingLog::open`] recovered.
#[derive(Debug)]
pub struct Recovered {
    /// Predictions not yet answered, with their age, oldest id first.
    pub predictions: Vec<(u64, Duration, PendingPrediction)>,
    /// The largest request id in the log (0 if none).
    pub max_id: u64,
    /// Records that could not be decoded (skipped).
    pub undecodable: u64,
    /// What opening the log found and repaired.
    pub report: OpenReport,
}

impl PendingLog {
    /// Opens the log in `config.dir` (cutting damage, as the WAL does) and reads
    /// back the predictions still waiting for a label.
    pub fn open(
        config: WalConfig,
        commit_interval: Duration,
        ttl: Duration,
        capacity: usize,
    ) -> Result<(Self, Recovered), WalError> {
        let dir = config.dir.clone();
        let (wal, report) = Wal::open(config)?;
        let mut recovered = read(&dir, ttl)?;
        recovered.report = report;
        Ok((
            Self {
                wal,
                commit_interval,
                ttl,
                capacity: capacity as u64,
                buffered_since: None,
                marks: VecDeque::new(),
                predictions: 0,
            },
            recovered,
        ))
    }

    /// Buffers an encoded prediction.
    pub fn append_prediction(&mut self, record: &[u8]) -> Result<(), WalError> {
        self.wal.append(record)?;
        self.predictions += 1;
        self.buffered_since.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Buffers the record that a label joined prediction `id`; commit it before
    /// acknowledging the label.
    pub fn append_answered(&mut self, id: u64) -> Result<(), WalError> {
        self.wal.append(&log::encode_answered(id, log::unix_ms()))?;
        self.buffered_since.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// When the buffer must be written, if it holds anything.
    pub fn due(&self) -> Option<Instant> {
        self.buffered_since.map(|t| t + self.commit_interval)
    }

    /// Writes the buffer if it is due (or `force`), then deletes segments nothing
    /// can still join.
    pub fn commit(&mut self, force: bool) -> Result<(), WalError> {
        self.commit_at(force, Instant::now())
    }

    /// [`commit`](Self::commit) at `now`, which decides what is due; an argument so
    /// tests step time instead of sleeping.
    pub fn commit_at(&mut self, force: bool, now: Instant) -> Result<(), WalError> {
        match self.due() {
            // Nothing buffered: this only lets an interval policy's fsync happen.
            None if !force => return self.wal.commit_at(now),
            // Buffered and not due: `Wal::commit` would write the buffer.
            Some(due) if !force && due > now => return Ok(()),
            _ => {}
        }
        self.buffered_since = None;
        self.wal.commit_at(now)?;
        if self.marks.back().is_none_or(|m| now - m.at >= MARK_EVERY) {
            self.marks.push_back(Mark {
                seq: self.wal.last_seq(),
                at: now,
                predictions: self.predictions,
            });
        }
        let mut through = None;
        while let Some(m) = self.marks.front() {
            let expired = now - m.at > self.ttl;
            let pushed_out = self.predictions - m.predictions >= self.capacity;
            if !(expired || pushed_out) {
                break;
            }
            through = Some(m.seq);
            self.marks.pop_front();
        }
        if let Some(seq) = through {
            self.wal.truncate_through(seq)?;
        }
        Ok(())
    }

    /// Writes and fsyncs everything buffered.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.buffered_since = None;
        self.wal.sync()
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.wal.bytes()
    }
}

/// Reads every record: predictions not answered and younger than `ttl` come back.
fn read(dir: &Path, ttl: Duration) -> Result<Recovered, WalError> {
    let now_ms = log::unix_ms();
    let mut waiting: HashMap<u64, (u64, PendingPrediction)> = HashMap::new();
    let mut max_id = 0;
    let mut undecodable = 0;
    crate::wal::replay(dir, 0, |seq, bytes| {
        match log::decode(bytes) {
            Ok(Record::Prediction {
                id,
                unix_ms,
                prediction,
            }) => {
                max_id = max_id.max(id);
                waiting.insert(id, (unix_ms, prediction));
            }
            Ok(Record::Answered { id }) => {
                waiting.remove(&id);
            }
            Err(e) => {
                undecodable += 1;
                tracing::error!(seq, error = %e, "pending log: a record cannot be read; skipped");
            }
        }
        ControlFlow::Continue(())
    })?;
    let mut predictions: Vec<_> = waiting
        .into_iter()
        .map(|(id, (unix_ms, p))| (id, Duration::from_millis(now_ms.saturating_sub(unix_ms)), p))
        .filter(|(_, age, _)| *age <= ttl)
        .collect();
    predictions.sort_by_key(|(id, _, _)| *id);
    Ok(Recovered {
        predictions,
        max_id,
        undecodable,
        report: OpenReport {
            segments: 0,
            records: 0,
            first_seq: None,
            last_seq: 0,
            bytes: 0,
            repaired: Vec::new(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Votes;
    use crate::wal::FsyncPolicy;

    fn prediction(i: u32) -> PendingPrediction {
        PendingPrediction {
            features: vec![i as f32, 1.0],
            votes: Votes::model_only(vec![0.25, 0.75]),
            predicted: 1,
            model_version: 3,
            ..Default::default()
        }
    }

    fn open(dir: &Path, capacity: usize) -> (PendingLog, Recovered) {
        PendingLog::open(
            WalConfig {
                fsync: FsyncPolicy::Never,
                segment_bytes: 512,
                ..WalConfig::new(dir)
            },
            Duration::from_millis(5),
            Duration::from_secs(600),
            capacity,
        )
        .unwrap()
    }

    #[test]
    fn unanswered_predictions_come_back_answered_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, recovered) = open(dir.path(), 1000);
        assert!(recovered.predictions.is_empty());
        for id in 1..=4 {
            let record = log::encode_prediction(id, log::unix_ms(), &prediction(id as u32));
            log.append_prediction(&record).unwrap();
        }
        log.append_answered(2).unwrap();
        assert!(log.due().is_some());
        log.commit(true).unwrap();
        assert!(log.due().is_none());
        // A SIGKILL now: nothing else is written.
        drop(log);
        let (_, recovered) = open(dir.path(), 1000);
        let ids: Vec<u64> = recovered.predictions.iter().map(|(id, _, _)| *id).collect();
        assert_eq!(ids, vec![1, 3, 4]);
        assert_eq!(recovered.max_id, 4);
        assert_eq!(recovered.predictions[1].2, prediction(3));
    }

    #[test]
    fn an_uncommitted_buffer_is_lost_and_a_due_one_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open(dir.path(), 1000);
        let appended = Instant::now();
        log.append_prediction(&log::encode_prediction(1, log::unix_ms(), &prediction(1)))
            .unwrap();
        // The commit interval is 5 ms; time is stepped, not slept.
        log.commit_at(false, appended + Duration::from_millis(4))
            .unwrap();
        drop(log);
        assert!(
            open(dir.path(), 1000).1.predictions.is_empty(),
            "not due yet"
        );
        let (mut log, _) = open(dir.path(), 1000);
        log.append_prediction(&log::encode_prediction(2, log::unix_ms(), &prediction(2)))
            .unwrap();
        log.commit_at(false, Instant::now() + Duration::from_millis(10))
            .unwrap();
        drop(log);
        assert_eq!(open(dir.path(), 1000).1.predictions.len(), 1);
    }

    #[test]
    fn expired_predictions_do_not_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open(dir.path(), 1000);
        let old = log::unix_ms() - 601_000;
        log.append_prediction(&log::encode_prediction(1, old, &prediction(1)))
            .unwrap();
        log.append_prediction(&log::encode_prediction(2, log::unix_ms(), &prediction(2)))
            .unwrap();
        log.commit(true).unwrap();
        let ids: Vec<u64> = open(dir.path(), 1000)
            .1
            .predictions
            .iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(ids, vec![2]);
    }

    #[test]
    fn segments_pushed_out_by_capacity_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open(dir.path(), 10);
        for id in 1..=200u64 {
            log.append_prediction(&log::encode_prediction(id, log::unix_ms(), &prediction(1)))
                .unwrap();
            log.commit(true).unwrap();
            // One mark per commit here.
            log.marks.back_mut().unwrap().at -= MARK_EVERY;
        }
        let bytes = log.bytes();
        assert!(bytes < 4_000, "{bytes} bytes kept for a capacity of 10");
        drop(log);
        let recovered = open(dir.path(), 10).1;
        let newest = recovered.predictions.last().unwrap().0;
        assert_eq!(newest, 200);
        assert!(recovered.predictions.len() >= 10);
    }

    #[test]
    fn a_damaged_record_is_cut_and_the_rest_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open(dir.path(), 1000);
        for id in 1..=3 {
            log.append_prediction(&log::encode_prediction(id, log::unix_ms(), &prediction(1)))
                .unwrap();
        }
        log.commit(true).unwrap();
        drop(log);
        // Flip a byte in the last record's payload.
        let segment = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "wal"))
            .unwrap();
        let mut bytes = std::fs::read(&segment).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0xff;
        std::fs::write(&segment, &bytes).unwrap();
        let (_, recovered) = open(dir.path(), 1000);
        assert_eq!(recovered.report.repaired.len(), 1);
        let ids: Vec<u64> = recovered.predictions.iter().map(|p| p.0).collect();
        assert_eq!(ids, vec![1, 2]);
    }
}
