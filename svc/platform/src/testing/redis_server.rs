//! A private Redis for tests that kill and restart it: `redis-server` as a child process on
//! a port of its own, persisting to an append-only file as production Redis must for the
//! streams to survive a restart.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use uuid::Uuid;

use super::smtp::free_port;

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<tokio::process::Child>,
}

impl RedisServer {
    /// On a free port; a port taken by another test in between is retried on another.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("mm-redis-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = spawn(port, &dir).await {
                return Self {
                    port,
                    dir,
                    child: Some(child),
                };
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it as a crash would (SIGKILL): nothing but what is already in the append-only
    /// file survives.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("redis-server is killed");
        }
    }

    /// Starts it again on the same port with the same data directory.
    pub async fn restart(&mut self) {
        self.kill().await;
        for _ in 0..20 {
            if let Some(child) = spawn(self.port, &self.dir).await {
                self.child = Some(child);
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("redis-server did not restart on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts redis-server and waits for its own "Ready to accept connections" line.
async fn spawn(port: u16, dir: &std::path::Path) -> Option<tokio::process::Child> {
    let mut child = tokio::process::Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir)
        .args(["--logfile", ""])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server must be installed (scripts/test installs it)");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("Ready to accept connections") {
                return true;
            }
        }
        false
    })
    .await;
    if matches!(ready, Ok(true)) {
        // Keep draining its log so that redis-server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Some(child)
    } else {
        let _ = child.start_kill();
        None
    }
}
