//! The checkpoint directory (`state_dir/checkpoints/`) and the serving record.
//!
//! The worker publishes `model-v{N}.safetensors` (FP16, written atomically) next to
//! one `config.json`, the shape every checkpoint shares. Each file's metadata says
//! where it came from ([`Provenance`]) — `version`, `parent_version`, `generation`
//! (the ring generation of the worker that published it), `parent_generation`,
//! `applied_seq` (the last update sequence number it has learned), `created_at` — so
//! the files alone are enough to restart: the server reads `serving.json` to know
//! which version it was serving, and a worker starting from that version knows which
//! WAL records it still owes. A checkpoint written before generations were stamped
//! reads as generation 0, which the swap task's fence never admits
//! ([`super::fence`]) but which loads as any other.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::fence::{Provenance, UNKNOWN_GENERATION};
use crate::model::store::{CONFIG_FILE, write_atomic};
use crate::model::{Mlp, ModelConfig, ModelError, SaveDtype};

/// Metadata key: the version this checkpoint was trained from.
pub const PARENT_KEY: &str = "parent_version";
/// Metadata key: the ring generation of the worker that published it.
pub const GENERATION_KEY: &str = "generation";
/// Metadata key: the ring generation that published its parent.
pub const PARENT_GENERATION_KEY: &str = "parent_generation";
/// Metadata key: the last update sequence number reflected in the weights.
pub const APPLIED_KEY: &str = "applied_seq";
/// Metadata key: unix milliseconds at publication.
pub const CREATED_KEY: &str = "created_at";

/// The last update sequence number a model has learned (0 if it says nothing).
pub fn applied_seq(model: &Mlp) -> u64 {
    model
        .metadata()
        .get(APPLIED_KEY)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Where a checkpoint came from. Keys it lacks (or cannot parse) read as no parent,
/// generation 0 ([`UNKNOWN_GENERATION`]) and `applied_seq` 0.
pub fn provenance(model: &Mlp) -> Provenance {
    let get = |key: &str| -> Option<u64> { model.metadata().get(key).and_then(|v| v.parse().ok()) };
    Provenance {
        version: model.version(),
        parent: get(PARENT_KEY),
        generation: get(GENERATION_KEY).unwrap_or(UNKNOWN_GENERATION),
        parent_generation: get(PARENT_GENERATION_KEY).unwrap_or(UNKNOWN_GENERATION),
        applied_seq: applied_seq(model),
    }
}

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A checkpoint directory.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
}

impl Checkpoints {
    /// The directory (not created until [`init`](Self::init)).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Where the checkpoints live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The shared `config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    /// `model-v{version}.safetensors`.
    pub fn weights_path(&self, version: u64) -> PathBuf {
        self.dir.join(format!("model-v{version}.safetensors"))
    }

    /// Creates the directory and writes `config.json`, or checks that an existing one
    /// describes the same network as `config` (a state dir belongs to one model shape).
    pub fn init(&self, config: &ModelConfig) -> Result<(), ModelError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| ModelError::io(&self.dir, "create directory", e))?;
        let path = self.config_path();
        if path.exists() {
            let existing = ModelConfig::from_file(&path)?;
            if existing != *config {
                return Err(ModelError::StateMismatch {
                    path,
                    reason: format!(
                        "it holds checkpoints of a {} network, the model given is {}",
                        existing.to_json(),
                        config.to_json()
                    ),
                });
            }
            return Ok(());
        }
        let mut json = config.to_json();
        json.push('\n');
        write_atomic(&path, json.as_bytes())
    }

    /// Every version on disk, ascending. Temp files and other names are ignored.
    pub fn versions(&self) -> Vec<u64> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut versions: Vec<u64> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                name.strip_prefix("model-v")?
                    .strip_suffix(".safetensors")?
                    .parse()
                    .ok()
            })
            .collect();
        versions.sort_unstable();
        versions
    }

    /// Loads one version, checked against `config.json`.
    pub fn load(&self, version: u64) -> Result<Mlp, ModelError> {
        Mlp::load_files(&self.config_path(), &self.weights_path(version))
    }

    /// Writes `model` as version `from.version` (FP16, atomically) with its
    /// provenance.
    pub fn publish(&self, model: &Mlp, from: &Provenance) -> Result<PathBuf, ModelError> {
        let path = self.weights_path(from.version);
        model.save_weights(&path, SaveDtype::F16, &stamp(model, from))?;
        Ok(path)
    }

    /// Writes a checkpoint's bytes as they came (a cluster replica keeps each version
    /// it serves, as received from the trainer), atomically.
    pub fn publish_bytes(&self, version: u64, bytes: &[u8]) -> Result<PathBuf, ModelError> {
        let path = self.weights_path(version);
        crate::model::store::write_atomic(&path, bytes)?;
        Ok(path)
    }

    /// Deletes all but the newest `keep` versions, never one in `protect`. Returns the
    /// versions deleted.
    pub fn prune(&self, keep: usize, protect: &[u64]) -> Vec<u64> {
        let versions = self.versions();
        let excess = versions.len().saturating_sub(keep);
        let mut deleted = Vec::new();
        for &v in versions.iter().take(excess) {
            if protect.contains(&v) {
                continue;
            }
            match std::fs::remove_file(self.weights_path(v)) {
                Ok(()) => deleted.push(v),
                Err(e) => {
                    tracing::warn!(version = v, error = %e, "cannot delete an old checkpoint")
                }
            }
        }
        deleted
    }
}

/// The safetensors metadata of a checkpoint: its version and provenance.
pub fn stamp(model: &Mlp, from: &Provenance) -> BTreeMap<String, String> {
    let version = from.version;
    let mut metadata = BTreeMap::new();
    metadata.insert("version".to_string(), version.to_string());
    if let Some(parent) = from.parent {
        metadata.insert(PARENT_KEY.to_string(), parent.to_string());
    }
    metadata.insert(GENERATION_KEY.to_string(), from.generation.to_string());
    metadata.insert(
        PARENT_GENERATION_KEY.to_string(),
        from.parent_generation.to_string(),
    );
    metadata.insert(APPLIED_KEY.to_string(), from.applied_seq.to_string());
    metadata.insert(CREATED_KEY.to_string(), unix_ms().to_string());
    // The seed checkpoint of a fresh model stays marked as untrained.
    if model.is_fresh() {
        metadata.insert(crate::model::store::FRESH_KEY.to_string(), "true".into());
    }
    metadata
}

/// Which checkpoint the server serves: `state_dir/serving.json`, rewritten atomically
/// at every swap so a restarted server serves the same version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServingRecord {
    pub version: u64,
    pub applied_seq: u64,
}

impl ServingRecord {
    /// The record's path in a state dir.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("serving.json")
    }

    /// Reads the record; `Ok(None)` when the state dir has none yet.
    pub fn read(state_dir: &Path) -> Result<Option<Self>, ModelError> {
        let path = Self::path(state_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|e| ModelError::StateMismatch {
                        path,
                        reason: format!("it is not a serving record: {e}"),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ModelError::io(&path, "read", e)),
        }
    }

    /// Writes the record atomically.
    pub fn write(&self, state_dir: &Path) -> Result<(), ModelError> {
        let json = serde_json::to_string(self).expect("a serving record serialises: this is a bug");
        write_atomic(&Self::path(state_dir), json.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Activation;

    fn model(version: u64) -> Mlp {
        let dir = tempfile::tempdir().unwrap();
        crate::model::init_model(3, 2, &[4], version, &dir.path().join("m")).unwrap();
        Mlp::load(&dir.path().join("m")).unwrap()
    }

    #[test]
    fn publish_load_list_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let store = Checkpoints::new(dir.path().join("checkpoints"));
        let m = model(0);
        store.init(m.config()).unwrap();
        store.init(m.config()).unwrap();
        for v in 1..=4 {
            let from = Provenance {
                version: v,
                parent: Some(v - 1),
                generation: 7,
                parent_generation: 6,
                applied_seq: v * 10,
            };
            store.publish(&m, &from).unwrap();
        }
        std::fs::write(store.dir().join(".model-v9.safetensors.tmp-1"), b"x").unwrap();
        assert_eq!(store.versions(), vec![1, 2, 3, 4]);
        let loaded = store.load(3).unwrap();
        assert_eq!((loaded.version(), applied_seq(&loaded)), (3, 30));
        assert_eq!(loaded.metadata()[PARENT_KEY], "2");
        assert_eq!(
            provenance(&loaded),
            Provenance {
                version: 3,
                parent: Some(2),
                generation: 7,
                parent_generation: 6,
                applied_seq: 30,
            }
        );
        assert_eq!(store.prune(2, &[1]), vec![2]);
        assert_eq!(store.versions(), vec![1, 3, 4]);

        let other = ModelConfig::mlp(5, &[4], 2, Activation::Relu);
        assert!(matches!(
            store.init(&other),
            Err(ModelError::StateMismatch { .. })
        ));
    }

    #[test]
    fn a_checkpoint_without_generations_loads_as_generation_zero() {
        let dir = tempfile::tempdir().unwrap();
        let store = Checkpoints::new(dir.path().join("checkpoints"));
        let m = model(0);
        store.init(m.config()).unwrap();
        // As a worker wrote them before generations were stamped.
        let old: BTreeMap<String, String> = [
            ("version", "5"),
            (PARENT_KEY, "4"),
            (APPLIED_KEY, "50"),
            (CREATED_KEY, "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        m.save_weights(&store.weights_path(5), SaveDtype::F16, &old)
            .unwrap();
        let loaded = store.load(5).unwrap();
        assert_eq!(
            provenance(&loaded),
            Provenance {
                version: 5,
                parent: Some(4),
                generation: UNKNOWN_GENERATION,
                parent_generation: UNKNOWN_GENERATION,
                applied_seq: 50,
            }
        );
        // Nothing at all: no parent either.
        m.save_weights(&store.weights_path(6), SaveDtype::F16, &BTreeMap::new())
            .unwrap();
        let bare = provenance(&store.load(6).unwrap());
        assert_eq!(
            (bare.parent, bare.generation, bare.applied_seq),
            (None, 0, 0)
        );
    }

    #[test]
    fn serving_record_round_trips_and_reports_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ServingRecord::read(dir.path()).unwrap(), None);
        let r = ServingRecord {
            version: 7,
            applied_seq: 99,
        };
        r.write(dir.path()).unwrap();
        assert_eq!(ServingRecord::read(dir.path()).unwrap(), Some(r));
        std::fs::write(ServingRecord::path(dir.path()), b"{").unwrap();
        assert!(matches!(
            ServingRecord::read(dir.path()),
            Err(ModelError::StateMismatch { .. })
        ));
    }
}
