//! The log against its promises: what was committed comes back, in order, after any
//! reopen, any torn tail and any truncation.

use std::ops::ControlFlow;

use proptest::prelude::*;

use super::*;

fn config(dir: &Path, segment_bytes: u64) -> WalConfig {
    WalConfig {
        segment_bytes,
        fsync: FsyncPolicy::Never,
        ..WalConfig::new(dir)
    }
}

fn payload(seq: u64) -> Vec<u8> {
    let len = (seq % 37) as usize;
    (0..len).map(|i| (seq as usize + i) as u8).collect()
}

fn read_all(dir: &Path, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    replay(dir, from, |seq, p| {
        out.push((seq, p.to_vec()));
        ControlFlow::Continue(())
    })
    .unwrap();
    out
}

fn write_n(wal: &mut Wal, n: u64) {
    for _ in 0..n {
        let seq = wal.last_seq() + 1;
        assert_eq!(wal.append(&payload(seq)).unwrap(), seq);
        if seq.is_multiple_of(7) {
            wal.commit().unwrap();
        }
    }
    wal.commit().unwrap();
}

fn last_segment(dir: &Path) -> PathBuf {
    segment::list(dir).unwrap().pop().unwrap().1
}

#[test]
fn committed_records_survive_reopen_and_numbering_continues() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, report) = Wal::open(config(dir.path(), 1 << 20)).unwrap();
    assert_eq!(
        (report.last_seq, report.records, report.first_seq),
        (0, 0, None)
    );
    write_n(&mut wal, 50);
    drop(wal);
    let (mut wal, report) = Wal::open(config(dir.path(), 1 << 20)).unwrap();
    assert_eq!(
        (report.last_seq, report.records, report.first_seq),
        (50, 50, Some(1))
    );
    assert!(report.repaired.is_empty());
    assert_eq!(wal.append(b"next").unwrap(), 51);
    wal.sync().unwrap();
    let all = read_all(dir.path(), 1);
    assert_eq!(all.len(), 51);
    assert_eq!(all[9], (10, payload(10)));
    assert_eq!(all[50], (51, b"next".to_vec()));
}

#[test]
fn replay_starts_anywhere_across_segments_and_can_stop_early() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(config(dir.path(), 256)).unwrap();
    write_n(&mut wal, 300);
    assert!(
        segment::list(dir.path()).unwrap().len() > 5,
        "small segments rotate"
    );
    for from in [1, 2, 77, 150, 299, 300] {
        let got = read_all(dir.path(), from);
        assert_eq!(got.first().map(|r| r.0), Some(from));
        assert_eq!(got.len() as u64, 301 - from);
        assert!(got.iter().all(|(seq, p)| *p == payload(*seq)));
    }
    assert!(read_all(dir.path(), 301).is_empty());
    let mut seen = 0;
    let r = replay(dir.path(), 10, |seq, _| {
        seen += 1;
        if seq == 20 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!((seen, r.last_seq, r.stopped_at_tail), (11, 20, false));
}

#[test]
fn a_torn_tail_is_cut_at_the_last_good_record_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(config(dir.path(), 1 << 20)).unwrap();
    write_n(&mut wal, 20);
    drop(wal);
    let path = last_segment(dir.path());
    let full = std::fs::read(&path).unwrap();
    // The crash cut the last record (seq 20, 20 payload bytes) three bytes short.
    std::fs::write(&path, &full[..full.len() - 3]).unwrap();
    let good = (full.len() - segment::RECORD_HEADER - payload(20).len()) as u64;

    let (mut wal, report) = Wal::open(config(dir.path(), 1 << 20)).unwrap();
    assert_eq!(report.last_seq, 19);
    assert_eq!(report.repaired.len(), 1);
    let repair = &report.repaired[0];
    assert_eq!(
        (repair.offset, repair.cut_bytes),
        (good, full.len() as u64 - 3 - good)
    );
    assert!(repair.reason.contains("torn"), "{}", repair.reason);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
    assert_eq!(wal.append(b"after").unwrap(), 20);
    wal.commit().unwrap();
    let all = read_all(dir.path(), 18);
    assert_eq!(
        all,
        vec![
            (18, payload(18)),
            (19, payload(19)),
            (20, b"after".to_vec())
        ]
    );
}

#[test]
fn a_flipped_bit_is_cut_and_reported_as_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(config(dir.path(), 1 << 20)).unwrap();
    write_n(&mut wal, 10);
    drop(wal);
    let path = last_segment(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    // Inside record 5's payload (payload(seq) has seq % 37 bytes).
    let offset: usize = HEADER_LEN
        + (1..5)
            .map(|s| segment::RECORD_HEADER + payload(s).len())
            .sum::<usize>()
        + segment::RECORD_HEADER;
    bytes[offset] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let (wal, report) = Wal::open(config(dir.path(), 1 << 20)).unwrap();
    assert_eq!(wal.last_seq(), 4);
    assert!(
        report.repaired[0].reason.contains("checksum"),
        "{:?}",
        report.repaired
    );
}

#[test]
fn damage_in_a_middle_segment_does_not_stop_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(config(dir.path(), 200)).unwrap();
    write_n(&mut wal, 100);
    drop(wal);
    let segments = segment::list(dir.path()).unwrap();
    let middle = &segments[segments.len() / 2].1;
    let mut bytes = std::fs::read(middle).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(middle, &bytes).unwrap();
    let (mut wal, report) = Wal::open(config(dir.path(), 200)).unwrap();
    assert_eq!(report.repaired.len(), 1);
    assert_eq!(wal.last_seq(), 100, "later segments still count");
    assert_eq!(wal.append(b"x").unwrap(), 101);
}

#[test]
fn truncation_deletes_only_fully_covered_closed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(config(dir.path(), 300)).unwrap();
    write_n(&mut wal, 200);
    let before = segment::list(dir.path()).unwrap();
    let bytes_before = wal.bytes();
    let on_disk: u64 = before
        .iter()
        .map(|(_, p)| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(bytes_before, on_disk);
    let deleted = wal.truncate_through(120).unwrap();
    assert!(deleted > 0);
    let after = segment::list(dir.path()).unwrap();
    assert_eq!(after.len(), before.len() - deleted);
    assert!(wal.bytes() < bytes_before);
    let first = wal.first_seq().unwrap();
    assert!(
        first <= 121,
        "seq 121 must still be readable, first is {first}"
    );
    let rest = read_all(dir.path(), 121);
    assert_eq!(rest.first().map(|r| r.0), Some(121));
    assert_eq!(rest.len(), 80);
    // Everything: only the active segment stays, and numbering survives a reopen.
    wal.truncate_through(10_000).unwrap();
    assert_eq!(segment::list(dir.path()).unwrap().len(), 1);
    drop(wal);
    let (mut wal, _) = Wal::open(config(dir.path(), 300)).unwrap();
    assert_eq!(wal.append(b"y").unwrap(), 201);
}

#[test]
fn numbering_never_falls_below_start_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), 1 << 20);
    c.start_after = 500;
    let (mut wal, report) = Wal::open(c).unwrap();
    assert_eq!(report.last_seq, 500);
    assert_eq!(wal.append(b"z").unwrap(), 501);
    wal.commit().unwrap();
    assert_eq!(read_all(dir.path(), 1), vec![(501, b"z".to_vec())]);
}

#[test]
fn oversized_records_and_foreign_files_are_handled() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"not a segment").unwrap();
    std::fs::write(dir.path().join("00000000000000000001.wal.tmp"), b"junk").unwrap();
    let (mut wal, report) = Wal::open(config(dir.path(), 1 << 20)).unwrap();
    assert!(report.repaired.is_empty());
    assert!(matches!(
        wal.append(&vec![0; MAX_PAYLOAD + 1]),
        Err(WalError::RecordTooLarge { .. })
    ));
    assert_eq!(
        wal.append(b"ok").unwrap(),
        1,
        "a refused record takes no number"
    );
}

#[test]
fn a_reader_alongside_the_writer_sees_a_growing_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(config(dir.path(), 4096)).unwrap();
    let path = dir.path().to_path_buf();
    let reader = std::thread::spawn(move || {
        let mut best = 0;
        for _ in 0..200 {
            let got = read_all(&path, 1);
            for (i, (seq, p)) in got.iter().enumerate() {
                assert_eq!(*seq, i as u64 + 1);
                assert_eq!(*p, payload(*seq));
            }
            assert!(got.len() >= best, "the prefix never shrinks");
            best = got.len();
        }
        best
    });
    write_n(&mut wal, 3_000);
    reader.join().unwrap();
    assert_eq!(read_all(dir.path(), 1).len(), 3_000);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any mix of appends, commits and reopens, then a crash that cuts the last file
    /// anywhere: what reopens is exactly a prefix of what was committed, and at least
    /// everything before the last segment.
    #[test]
    fn a_cut_anywhere_leaves_a_prefix(
        ops in proptest::collection::vec((0usize..40, any::<bool>(), proptest::bool::weighted(0.1)), 1..60),
        cut in 0usize..400,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut written: Vec<Vec<u8>> = Vec::new();
        let (mut wal, _) = Wal::open(config(dir.path(), 512)).unwrap();
        for (len, commit, reopen) in ops {
            let p = vec![len as u8; len];
            wal.append(&p).unwrap();
            written.push(p);
            if commit || reopen {
                wal.commit().unwrap();
            }
            if reopen {
                drop(wal);
                wal = Wal::open(config(dir.path(), 512)).unwrap().0;
            }
        }
        wal.commit().unwrap();
        drop(wal);
        let segments = segment::list(dir.path()).unwrap();
        let last = &segments.last().unwrap().1;
        let bytes = std::fs::read(last).unwrap();
        let keep = bytes.len().saturating_sub(cut).max(HEADER_LEN);
        std::fs::write(last, &bytes[..keep]).unwrap();
        let (wal, _) = Wal::open(config(dir.path(), 512)).unwrap();
        let got = read_all(dir.path(), 1);
        prop_assert_eq!(got.len() as u64, wal.last_seq());
        for (i, (seq, p)) in got.iter().enumerate() {
            prop_assert_eq!(*seq, i as u64 + 1);
            prop_assert_eq!(p, &written[i]);
        }
        let before_last = segments.last().unwrap().0 - 1;
        prop_assert!(wal.last_seq() >= before_last);
    }
}

/// What a machine crash can take under each policy: the records after
/// `synced_seq`, the last one fsynced.
#[test]
fn each_fsync_policy_bounds_what_a_machine_crash_can_take() {
    let commit_one = |wal: &mut Wal| {
        wal.append(&payload(0)).unwrap();
        wal.commit().unwrap();
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut always, _) = Wal::open(WalConfig {
        fsync: FsyncPolicy::Always,
        ..config(dir.path(), 1 << 20)
    })
    .unwrap();
    for _ in 0..3 {
        commit_one(&mut always);
        assert_eq!(
            always.synced_seq(),
            always.last_seq(),
            "always: every commit"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let (mut interval, _) = Wal::open(WalConfig {
        fsync: FsyncPolicy::IntervalMs(2_000),
        ..config(dir.path(), 1 << 20)
    })
    .unwrap();
    commit_one(&mut interval);
    commit_one(&mut interval);
    assert_eq!(interval.synced_seq(), 0, "interval: not yet due");
    // 2.1 s later, the writer's idle tick commits nothing new and still owes the fsync.
    interval
        .commit_at(Instant::now() + Duration::from_millis(2_100))
        .unwrap();
    assert_eq!(
        interval.synced_seq(),
        2,
        "interval: at most the interval behind"
    );

    let dir = tempfile::tempdir().unwrap();
    let (mut never, _) = Wal::open(WalConfig {
        fsync: FsyncPolicy::Never,
        ..config(dir.path(), 1 << 20)
    })
    .unwrap();
    commit_one(&mut never);
    never
        .commit_at(Instant::now() + Duration::from_millis(50))
        .unwrap();
    assert_eq!(never.synced_seq(), 0, "never: left to the OS");
    never.sync().unwrap();
    assert_eq!(
        never.synced_seq(),
        1,
        "but an explicit sync (shutdown, checkpoint) fsyncs"
    );
}
