//! The error every settings section reports, and the range checks they share.
//!
//! Each subsystem owns its config section: its fields, its defaults and its
//! validation, next to the code that reads it. A bad value is refused at startup
//! with the setting's full name (`worker.learning_rate`), whichever crate owns it.

/// A setting that is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {setting}: {reason}")]
pub struct InvalidSetting {
    /// The setting's full name, `section.key`.
    pub setting: &'static str,
    pub reason: String,
}

/// `setting` is refused for `reason`.
pub fn invalid(setting: &'static str, reason: String) -> InvalidSetting {
    InvalidSetting { setting, reason }
}

/// Refuses 0.
pub fn positive(setting: &'static str, value: usize) -> Result<(), InvalidSetting> {
    if value == 0 {
        return Err(invalid(setting, "must be greater than 0".into()));
    }
    Ok(())
}

/// Refuses a value outside [0, 1].
pub fn unit_interval(setting: &'static str, value: f32) -> Result<(), InvalidSetting> {
    if !(0.0..=1.0).contains(&value) {
        return Err(invalid(setting, format!("must be in [0, 1], got {value}")));
    }
    Ok(())
}
