//! One child process of the topology: started with its output appended to its log,
//! signalled, killed and started again with the same arguments, and killed when
//! dropped (so an error or a panic in the simulator leaves no process behind).

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;

/// One child process and how to start it again.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    exe: PathBuf,
    args: Vec<OsString>,
    pub envs: Vec<(String, String)>,
    log: PathBuf,
    child: Option<tokio::process::Child>,
    /// Starts so far (restarts are `starts - 1`).
    pub starts: u32,
}

impl Proc {
    pub fn new(name: &str, exe: PathBuf, args: Vec<OsString>, log: PathBuf) -> Self {
        Self {
            name: name.to_string(),
            exe,
            args,
            envs: vec![("NO_COLOR".into(), "1".into())],
            log,
            child: None,
            starts: 0,
        }
    }

    /// Starts the process, its stdout and stderr appended to its log; returns the pid.
    pub fn start(&mut self) -> anyhow::Result<u32> {
        // A new run starts a new log; a restart appends to it.
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(self.starts > 0)
            .truncate(self.starts == 0)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        writeln!(
            log,
            "--- adaptserve simulate: start {} of {} ---",
            self.starts + 1,
            self.name
        )?;
        let err = log.try_clone()?;
        let child = tokio::process::Command::new(&self.exe)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} ({})", self.name, self.exe.display()))?;
        self.starts += 1;
        let pid = child.id().context("a child without a pid")?;
        self.child = Some(child);
        Ok(pid)
    }

    /// The running child's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(tokio::process::Child::id)
    }

    /// Sends `signal`; returns the pid signalled.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<u32> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.name))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
            .with_context(|| format!("cannot send {signal} to {}", self.name))?;
        Ok(pid)
    }

    /// SIGKILLs the child and reaps it; returns its pid.
    pub async fn kill(&mut self) -> anyhow::Result<u32> {
        let mut child = self
            .child
            .take()
            .with_context(|| format!("{} is not running", self.name))?;
        let pid = child.id().unwrap_or(0);
        child.start_kill().ok();
        let _ = child.wait().await;
        Ok(pid)
    }

    /// If the child has exited, forgets it and returns how.
    pub fn reap(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status.to_string())
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            // A stopped process cannot act on SIGTERM.
            let _ = nix::sys::signal::kill(pid, Signal::SIGCONT);
            let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        }
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_killed_proc_is_reaped_and_can_start_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut p = Proc::new(
            "sleeper",
            "sleep".into(),
            vec!["30".into()],
            dir.path().join("sleeper.log"),
        );
        let first = p.start().expect("start");
        assert_eq!(p.kill().await.expect("kill"), first);
        assert!(p.pid().is_none());
        let second = p.start().expect("restart");
        assert_ne!(first, second);
        assert_eq!(p.starts, 2);
        p.stop(Duration::from_secs(5)).await;
        let log = std::fs::read_to_string(dir.path().join("sleeper.log")).expect("log");
        assert_eq!(log.matches("adaptserve simulate: start").count(), 2);
    }
}
