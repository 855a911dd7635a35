//! A kiln run watched through its `--progress json` events, to signal or kill it at a stage.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// A running kiln (with `--progress json`) and its stderr, line by line.
pub struct Running {
    pub child: Child,
    lines: Receiver<String>,
    pub log: Vec<String>,
}

impl Running {
    pub fn start(mut cmd: Command) -> Running {
        let mut child = cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Running { child, lines, log: Vec::new() }
    }

    /// Waits for the JSON event that starts `stage`; false if the bake ended first.
    pub fn wait_for_stage(&mut self, stage: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_secs(1)) {
                Ok(line) => {
                    let hit = line.contains(&format!("\"stage\":\"{stage}\"")) && line.contains("\"event\":\"start\"");
                    self.log.push(line);
                    if hit {
                        return true;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => return false,
            }
        }
        panic!("no {stage} stage within 300 s:\n{}", self.log.join("\n"));
    }

    pub fn kill9(&mut self) -> ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        self.child.wait().unwrap()
    }

    pub fn finish(mut self) -> (ExitStatus, String) {
        let status = self.child.wait().unwrap();
        self.log.extend(self.lines.iter());
        (status, self.log.join("\n"))
    }

    /// Sends `signal` and waits for the end; returns the exit status and the whole log.
    pub fn signal(self, signal: i32) -> (ExitStatus, String) {
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.finish()
    }
}
