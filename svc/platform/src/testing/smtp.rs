//! A real SMTP server for tests: Python's aiosmtpd, started as a child process.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

/// A real SMTP server (Python's aiosmtpd) that writes every message it accepts, decoded, as
/// one JSON file to a directory of its own.
pub struct SmtpServer {
    pub port: u16,
    dir: PathBuf,
    child: tokio::process::Child,
}

const SMTP_SCRIPT: &str = r#"
import email, email.policy, json, os, sys, threading, uuid
from aiosmtpd.controller import Controller

port, out = int(sys.argv[1]), sys.argv[2]

class Mailbox:
    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        part = msg.get_body(preferencelist=("plain",))
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(msg["From"]),
            "to": str(msg["To"]),
            "subject": str(msg["Subject"]),
            "body": part.get_content() if part is not None else "",
        }
        name = uuid.uuid4().hex
        with open(os.path.join(out, name + ".tmp"), "w") as f:
            json.dump(record, f)
        os.rename(os.path.join(out, name + ".tmp"), os.path.join(out, name + ".json"))
        return "250 Message accepted for delivery"

Controller(Mailbox(), hostname="127.0.0.1", port=port).start()
print("ready", flush=True)
threading.Event().wait()
"#;

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Fails the test (never skips it) when aiosmtpd is missing.
fn require_aiosmtpd() {
    let status = std::process::Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .status()
        .expect("python3 must be installed to run the SMTP server of these tests");
    assert!(
        status.success(),
        "the notification tests need a real SMTP server: `python3 -m pip install aiosmtpd` \
         (scripts/test installs it)"
    );
}

impl SmtpServer {
    /// On a free port. A port found free can be taken by another test before aiosmtpd binds
    /// it, so a server that fails to start is retried on another port.
    pub async fn start() -> Self {
        for _ in 0..5 {
            if let Some(server) = Self::try_start_on(free_port()).await {
                return server;
            }
        }
        panic!("the SMTP server (aiosmtpd) did not start on any of 5 free ports");
    }

    pub async fn start_on(port: u16) -> Self {
        Self::try_start_on(port)
            .await
            .unwrap_or_else(|| panic!("the SMTP server (aiosmtpd) did not start on port {port}"))
    }

    /// Starts aiosmtpd and waits for its own "ready" line, printed only once it has bound
    /// the port (probing the port instead could find another test's server there).
    async fn try_start_on(port: u16) -> Option<Self> {
        use tokio::io::AsyncBufReadExt;
        require_aiosmtpd();
        let dir = std::env::temp_dir().join(format!("mm-smtp-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = tokio::process::Command::new("python3")
            .arg("-c")
            .arg(SMTP_SCRIPT)
            .arg(port.to_string())
            .arg(&dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(15), lines.next_line()).await;
        match ready {
            Ok(Ok(Some(line))) if line.trim() == "ready" => Some(Self { port, dir, child }),
            _ => {
                let _ = child.start_kill();
                let _ = std::fs::remove_dir_all(&dir);
                None
            }
        }
    }

    /// Every message received so far.
    pub fn messages(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) == Some("json") {
                out.push(serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap());
            }
        }
        out
    }

    /// The messages to `address`.
    pub fn messages_to(&self, address: &str) -> Vec<Value> {
        self.messages()
            .into_iter()
            .filter(|m| {
                m["rcpt_tos"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r == address)
            })
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
