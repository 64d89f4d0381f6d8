//! The local config source follows its KV seed file: an edit on disk reaches a watch, as a
//! change in Consul's KV does, without a restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use platform::config::{ConfigSource, LocalConfig};

const KEY: &str = "micromart/gateway/cors_origins";
const PREFIX: &str = "micromart/gateway/";

/// A seed file of this test's own, removed when dropped.
struct SeedFile(PathBuf);

impl SeedFile {
    fn new() -> Self {
        let path =
            std::env::temp_dir().join(format!("micromart-seed-{}.json", uuid::Uuid::new_v4()));
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text`, stamped `stamp_s` seconds after the epoch's first minute: each edit gets
    /// a time of its own whatever the file system's timestamp resolution.
    fn write(&self, text: &str, stamp_s: u64) {
        std::fs::write(&self.0, text).unwrap();
        let file = std::fs::File::options().write(true).open(&self.0).unwrap();
        file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(60 + stamp_s))
            .unwrap();
    }

    /// Writes a seed (`consul kv export` format) holding `KEY` = `value`.
    fn write_value(&self, value: &str, stamp_s: u64) {
        let encoded = base64::engine::general_purpose::STANDARD.encode(value);
        let seed = serde_json::json!([{ "key": KEY, "flags": 0, "value": encoded }]);
        self.write(&seed.to_string(), stamp_s);
    }
}

impl Drop for SeedFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn value_in(pairs: &[platform::config::KvPair]) -> Option<&str> {
    pairs
        .iter()
        .find(|p| p.key == KEY)
        .map(|p| p.value.as_str())
}

#[tokio::test]
async fn an_edit_of_the_seed_file_reaches_a_watch_and_a_broken_one_keeps_the_last_values() {
    let seed = SeedFile::new();
    seed.write_value("http://one.example", 1);
    let config = LocalConfig::from_seed(seed.path()).unwrap();
    let file_watch = config.spawn_file_watch(Duration::from_millis(20));
    let first = config
        .watch(PREFIX, 0, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(value_in(&first.pairs), Some("http://one.example"));

    // The watch blocks until the edit has been read, and answers with it.
    let waiting = config.watch(PREFIX, first.index, Duration::from_secs(10));
    let edit = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seed.write_value("http://two.example", 2);
    };
    let (changed, ()) = tokio::join!(waiting, edit);
    let changed = changed.unwrap();
    assert!(changed.index > first.index);
    assert_eq!(value_in(&changed.pairs), Some("http://two.example"));

    // An edit that is not a seed (half written, say) changes nothing; once it is whole
    // again, it applies.
    seed.write("[{\"key\": ", 3);
    assert!(
        config.reload_if_changed().is_err(),
        "the broken seed is read and refused"
    );
    assert_eq!(
        config.get(KEY).await.unwrap().as_deref(),
        Some("http://two.example"),
        "a broken seed keeps the values last read"
    );
    let waiting = config.watch(PREFIX, changed.index, Duration::from_secs(10));
    let mended = async { seed.write_value("http://three.example", 4) };
    let (mended_seen, ()) = tokio::join!(waiting, mended);
    assert_eq!(
        value_in(&mended_seen.unwrap().pairs),
        Some("http://three.example")
    );
    file_watch.abort();
}
