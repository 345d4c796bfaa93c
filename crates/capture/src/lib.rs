//! Raw inputs captured for retraining. A server asks [`Capturer::capture`] for each prediction:
//! a share of them (per model, per station) and every item going to a person are kept, unless
//! the model's privacy setting forbids it. The decision and the content hash are made on the
//! request path; the bytes go through a bounded queue to a spool directory and from there to
//! the object store (a local directory, or S3), content-addressed: `<model>/<sha256>` for the
//! bytes and `<model>/predictions/<prediction id>.json` for what was captured when. The record
//! of the prediction carries the object key. A store that is away loses nothing: captures wait
//! in the spool (bounded) and are stored when it is back, also after a restart.

mod config;
mod expire;
mod spool;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

pub use config::{CaptureConfig, HASH_KEY_ENV, ModelCapture, Privacy};
pub use expire::{Expired, expire_captures};
pub use spool::{open_store, open_url};

/// What a server knows of one prediction's input.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub model: &'a str,
    pub version: &'a str,
    pub prediction_id: &'a str,
    pub station_id: &'a str,
    pub device_id: &'a str,
    /// e.g. `image/png`, `application/octet-stream`.
    pub content_type: &'a str,
    pub bytes: &'a [u8],
    /// The item goes to a person: captured whatever the rate.
    pub review: bool,
    /// The least rate for this input (raised while an alarm asks for more data); the model's
    /// privacy still rules.
    pub min_rate: f64,
}

/// What is kept beside a captured input, as `<model>/predictions/<prediction id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureMeta {
    pub prediction_id: String,
    pub model: String,
    pub version: String,
    /// The object key of the bytes: `<model>/<sha256>`.
    pub key: String,
    pub sha256: String,
    pub bytes: u64,
    pub content_type: String,
    /// As received, or a keyed hash (privacy `hashed_ids`).
    pub station_id: String,
    pub device_id: String,
    /// Why: `sampled` or `review`.
    pub reason: String,
    /// Unix milliseconds.
    pub time_ms: i64,
}

/// Counters of what capture did.
#[derive(Debug, Default)]
pub struct CaptureStats {
    pub captured: AtomicU64,
    pub too_large: AtomicU64,
    pub queue_full: AtomicU64,
    pub spool_full: AtomicU64,
    pub stored: AtomicU64,
    pub store_failures: AtomicU64,
    /// Spool entries set aside in its `broken/` folder: unreadable metadata (cut short by a
    /// power cut), an input file missing, or an input left without metadata by a crash.
    pub broken: AtomicU64,
    /// Bytes in the spool now, and those of captures accepted on their way to it (room is
    /// taken when a capture is accepted, so that a record names only a capture the spool holds).
    pub spooled_bytes: AtomicU64,
}

/// One capture on its way to the spool.
struct Pending {
    meta: CaptureMeta,
    bytes: Vec<u8>,
}

/// Decides, hashes and hands captures to the spool; cheap to clone.
#[derive(Clone)]
pub struct Capturer {
    config: Arc<CaptureConfig>,
    queue: mpsc::Sender<Pending>,
    stats: Arc<CaptureStats>,
    hash_key: Option<Arc<Vec<u8>>>,
}

/// Why capture could not start.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("capture: {0}")]
    Config(String),
    #[error("capture store {url}: {source}")]
    Store { url: String, source: object_store::Error },
    #[error("capture spool {path}: {source}")]
    Spool { path: String, source: std::io::Error },
}

impl Capturer {
    /// Starts the spool writer and the forwarder to the store (they end when every capturer
    /// is dropped and the spool has been offered to the store once more).
    pub async fn start(config: CaptureConfig) -> Result<(Self, tokio::task::JoinHandle<()>), CaptureError> {
        config.validate().map_err(CaptureError::Config)?;
        let store = open_store(&config)?;
        let stats = Arc::new(CaptureStats::default());
        let (queue, pending) = mpsc::channel(config.queue);
        // Read as the configuration checked it: any bytes (a key that is not UTF-8 is a key).
        let hash_key = std::env::var_os(HASH_KEY_ENV)
            .filter(|k| !k.is_empty())
            .map(|k| Arc::new(std::os::unix::ffi::OsStringExt::into_vec(k)));
        let task = spool::start(config.spool.clone(), store, pending, stats.clone()).await?;
        Ok((Self { config: Arc::new(config), queue, stats, hash_key }, task))
    }

    /// The counters.
    pub fn stats(&self) -> &CaptureStats {
        &self.stats
    }

    /// Whether `input` would be captured (its bytes are not looked at): a server that must
    /// prepare the bytes first asks this before it does.
    pub fn wants(&self, input: &Input<'_>) -> bool {
        let privacy = self.config.privacy(input.model);
        if matches!(privacy, Privacy::Never | Privacy::FeaturesOnly) {
            return false;
        }
        let rate = self.config.rate_for(input.model, input.station_id).max(input.min_rate);
        input.review || sample(input.prediction_id) < rate
    }

    /// Captures `input` when its model's policy says so; returns the object key the bytes will
    /// have (for the prediction's record), or None when not captured.
    pub fn capture(&self, input: Input<'_>) -> Option<String> {
        if !self.wants(&input) {
            return None;
        }
        let privacy = self.config.privacy(input.model);
        if input.bytes.len() > self.config.max_input_bytes {
            self.stats.too_large.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let sha256 = hex::encode(Sha256::digest(input.bytes));
        let key = format!("{}/{sha256}", input.model);
        let id = |value: &str| match (privacy, &self.hash_key) {
            (Privacy::HashedIds, Some(k)) if !value.is_empty() => keyed_hash(k, value),
            // Never the raw id under `hashed_ids` (the configuration refuses a missing key).
            (Privacy::HashedIds, _) => String::new(),
            _ => value.to_string(),
        };
        let meta = CaptureMeta {
            prediction_id: input.prediction_id.into(),
            model: input.model.into(),
            version: input.version.into(),
            key: key.clone(),
            sha256,
            bytes: input.bytes.len() as u64,
            content_type: input.content_type.into(),
            station_id: id(input.station_id),
            device_id: id(input.device_id),
            reason: if input.review { "review" } else { "sampled" }.into(),
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        };
        // Room in the spool is taken now: the key goes into the prediction's record, which must
        // not name bytes a full spool will refuse.
        let size = input.bytes.len() as u64;
        if !spool::reserve(&self.stats.spooled_bytes, size, self.config.max_spool_bytes) {
            self.stats.spool_full.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        match self.queue.try_send(Pending { meta, bytes: input.bytes.to_vec() }) {
            Ok(()) => {
                self.stats.captured.fetch_add(1, Ordering::Relaxed);
                Some(key)
            }
            Err(_) => {
                spool::release(&self.stats.spooled_bytes, size);
                self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

impl std::fmt::Debug for Capturer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capturer").field("store", &self.config.store).finish_non_exhaustive()
    }
}

/// A prediction id's place in [0, 1): the same id always gets the same answer.
fn sample(prediction_id: &str) -> f64 {
    let digest = Sha256::digest(prediction_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// HMAC-SHA256 of `value` under `key`, hex.
pub fn keyed_hash(key: &[u8], value: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(value.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_stable_per_id_and_near_the_rate() {
        let ids: Vec<String> = (0..20_000).map(|i| format!("01a2-{i}")).collect();
        let kept = ids.iter().filter(|id| sample(id) < 0.1).count();
        assert!((1_800..2_200).contains(&kept), "{kept} of 20000 at 10%");
        assert!(ids.iter().all(|id| sample(id) == sample(id)));
    }

    #[test]
    fn rates_follow_station_then_model_then_default_and_privacy_forbids() {
        let config: CaptureConfig = toml::from_str(
            r#"
enabled = true
rate = 0.01
[models.a]
rate = 0.2
stations = { line-3 = 1.0 }
[models.b]
privacy = "features_only"
[models.c]
privacy = "never"
"#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.rate_for("a", "line-3"), 1.0);
        assert_eq!(config.rate_for("a", "line-1"), 0.2);
        assert_eq!(config.rate_for("z", "line-1"), 0.01);
        assert_eq!(config.rate_for("b", "line-1"), 0.0);
        assert_eq!(config.rate_for("c", "line-1"), 0.0);
        let bad: CaptureConfig = toml::from_str("enabled = true\n[models.a]\nrate = 1.5\n").unwrap();
        assert!(bad.validate().unwrap_err().contains("capture.models.a.rate 1.5"));
    }

    #[test]
    fn keyed_hashes_match_the_rfc_4231_test_vector() {
        // RFC 4231, test case 2.
        assert_eq!(
            keyed_hash(b"Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
