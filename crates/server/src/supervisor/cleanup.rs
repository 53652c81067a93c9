//! What a dead worker or a dead server leaves behind, and removing it.
//!
//! - Rings of dead servers in `/dev/shm`: a ring's header names its creator by pid
//!   *and* process start time, so a reused pid is not mistaken for the owner (a bare
//!   `kill(pid, 0)` would be). Files whose header cannot be read fall back to the pid
//!   in their name.
//! - Checkpoint temp files (`.model-vN.safetensors.tmp-PID`) of a worker killed while
//!   writing one.

use std::path::{Path, PathBuf};

use crate::ipc::process_start;

/// The file-name prefix of every ring.
pub const RING_PREFIX: &str = "adaptserve-";

/// Removes rings in `dir` whose creating process is gone; returns what it removed.
pub fn remove_dead_rings(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with(RING_PREFIX) && name.ends_with(".ring")) {
            continue;
        }
        let path = entry.path();
        if owner_alive(&path, name) {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale ring")
            }
        }
    }
    removed
}

fn owner_alive(path: &Path, name: &str) -> bool {
    let mut line = [0u8; 40];
    let read =
        std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut line));
    if read.is_ok()
        && line[..8] == *b"ADSRING1"
        && u32::from_le_bytes([line[8], line[9], line[10], line[11]]) >= 2
    {
        let pid = u32::from_le_bytes([line[20], line[21], line[22], line[23]]);
        let start = u64::from_le_bytes(line[32..40].try_into().expect("8 bytes: this is a bug"));
        return process_start(pid).is_some_and(|s| s == start);
    }
    // No readable header: judge by the pid in `adaptserve-<pid>-...`.
    name[RING_PREFIX.len()..]
        .split('-')
        .next()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|pid| process_start(pid).is_some())
}

/// Removes checkpoint temp files in `dir`; returns how many.
pub fn remove_temp_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with('.') && n.contains(".tmp-"))
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::Ring;

    #[test]
    fn only_rings_of_dead_owners_and_temp_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let live = Ring::create(&dir.path().join("adaptserve-1-0.ring"), 4, 8, 1).unwrap();
        // A ring whose recorded owner (this pid) has another start time: a reused pid.
        let reused = dir.path().join("adaptserve-2-0.ring");
        std::fs::copy(live.path(), &reused).unwrap();
        let mut bytes = std::fs::read(&reused).unwrap();
        bytes[32] ^= 0xff;
        std::fs::write(&reused, &bytes).unwrap();
        // An unreadable one named after a pid that cannot exist.
        std::fs::write(dir.path().join("adaptserve-4194999-0.ring"), b"x").unwrap();
        std::fs::write(dir.path().join("other.ring"), b"x").unwrap();
        let mut removed = remove_dead_rings(dir.path());
        removed.sort();
        assert_eq!(
            removed,
            vec![reused, dir.path().join("adaptserve-4194999-0.ring")]
        );
        assert!(live.path().exists() && dir.path().join("other.ring").exists());

        std::fs::write(dir.path().join(".model-v3.safetensors.tmp-77"), b"x").unwrap();
        std::fs::write(dir.path().join("model-v3.safetensors"), b"x").unwrap();
        assert_eq!(remove_temp_files(dir.path()), 1);
        assert!(dir.path().join("model-v3.safetensors").exists());
    }
}
