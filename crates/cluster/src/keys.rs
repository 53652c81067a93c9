//! Every key the cluster uses, under one prefix in braces: Redis Cluster hashes only
//! the part in braces, so all keys share a slot and the Lua scripts that touch
//! several of them stay legal there too.

/// The key names under a prefix (default `adaptserve`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    tag: String,
}

impl Keys {
    /// Keys under `prefix`, which names one cluster (several may share a Redis).
    pub fn new(prefix: &str) -> Self {
        Self {
            tag: format!("{{{prefix}}}"),
        }
    }

    /// The stream of every replica's updates (fields `r`, `s`, `u`).
    pub fn labels(&self) -> String {
        format!("{}:labels", self.tag)
    }

    /// Hash: replica id → the highest sequence number of its WAL in `labels`.
    pub fn forwarded(&self) -> String {
        format!("{}:forwarded", self.tag)
    }

    /// The stream of published versions.
    pub fn versions(&self) -> String {
        format!("{}:versions", self.tag)
    }

    /// One version's weights (safetensors bytes).
    pub fn weights(&self, version: u64) -> String {
        format!("{}:weights:{version}", self.tag)
    }

    /// The trainer's lease: its fencing token, with an expiry.
    pub fn lease(&self) -> String {
        format!("{}:trainer:lease", self.tag)
    }

    /// The counter fencing tokens are drawn from (only ever increases).
    pub fn tokens(&self) -> String {
        format!("{}:trainer:tokens", self.tag)
    }

    /// The leading trainer's status (JSON), refreshed every second.
    pub fn trainer_status(&self) -> String {
        format!("{}:trainer:status", self.tag)
    }

    /// Counter a replica raises to ask the trainer to publish now (the sync barrier).
    pub fn sync(&self) -> String {
        format!("{}:sync", self.tag)
    }

    /// A prediction awaiting its label, by request id.
    pub fn pending(&self, request_id: u64) -> String {
        format!("{}:pending:{request_id}", self.tag)
    }

    /// Set once a label joined prediction `request_id` (its claimer's nonce).
    pub fn answered(&self, request_id: u64) -> String {
        format!("{}:answered:{request_id}", self.tag)
    }

    /// Hash: replica id → its status (JSON), refreshed every second.
    pub fn replicas(&self) -> String {
        format!("{}:replicas", self.tag)
    }

    /// A client's request count in one rate-limit window.
    pub fn rate(&self, client: &str, window: u64) -> String {
        format!("{}:rate:{window}:{client}", self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_carries_the_same_hash_tag() {
        let keys = Keys::new("prod");
        for key in [
            keys.labels(),
            keys.forwarded(),
            keys.versions(),
            keys.weights(3),
            keys.lease(),
            keys.tokens(),
            keys.trainer_status(),
            keys.sync(),
            keys.pending(42),
            keys.answered(42),
            keys.replicas(),
            keys.rate("10.0.0.1", 7),
        ] {
            assert!(key.starts_with("{prod}:"), "{key}");
        }
        assert_ne!(keys.labels(), Keys::new("test").labels());
    }
}
