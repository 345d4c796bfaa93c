//! What a prediction record may carry, per model: which input features, how much of the
//! output, free text or not, identifiers as given, hashed with a keyed hash or left out, and
//! whether an item sent to review carries its raw input. Applied to every record before it
//! leaves the server; raw inputs otherwise reach storage only through the capture policy.

use std::collections::BTreeMap;
use std::path::PathBuf;

use vigil_proto::vigil::v1::{FeedbackEvent, PredictionOutput, PredictionRecord};

/// How much of a model's output a record keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputDetail {
    /// Label, scores, verdict and (with `text`) text.
    Full,
    /// The label and verdict only: no scores.
    Label,
    /// Only whether the output was null.
    None,
}

/// What becomes of the identifiers a caller sends (station, device, part, request, session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Identifiers {
    /// Logged as given.
    Plain,
    /// Replaced by a keyed hash (HMAC-SHA-256 under `identifier_key_file`): the same id gives
    /// the same value, so per-station metrics still group, but the id cannot be read back or
    /// guessed without the key.
    Hashed,
    /// Left out.
    Omitted,
}

/// Rules for one model; a field left out takes the default's (`[logging.policy]`), and the
/// default's left out log everything as before.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyRules {
    /// Input features kept, by name (`"image.*"` keeps every feature starting `image.`);
    /// unset: all; `[]`: none.
    pub features: Option<Vec<String>>,
    /// `full`, `label` or `none`.
    pub outputs: Option<OutputDetail>,
    /// Free text outputs (a transcript, a search query).
    pub text: Option<bool>,
    /// `plain`, `hashed` or `omitted`.
    pub identifiers: Option<Identifiers>,
    /// Whether an item sent to human review carries its raw input to the review queue.
    pub review_input: Option<bool>,
}

/// `[logging.policy]`: the default rules, the key for hashed identifiers, and per-model rules.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogPolicyConfig {
    /// Default rules (see [`PolicyRules`]).
    pub features: Option<Vec<String>>,
    pub outputs: Option<OutputDetail>,
    pub text: Option<bool>,
    pub identifiers: Option<Identifiers>,
    pub review_input: Option<bool>,
    /// A file of at least 16 bytes: the key of the identifiers' keyed hash. Keep it secret and
    /// stable (a new key gives every station a new hashed id).
    pub identifier_key_file: Option<PathBuf>,
    /// Rules by model name, over the default's.
    pub models: BTreeMap<String, PolicyRules>,
}

/// The smallest identifier key accepted.
pub const MIN_KEY_BYTES: usize = 16;

impl LogPolicyConfig {
    /// Checks the rules and reads the key; messages name the key under `logging.policy`.
    pub fn load(&self) -> Result<LogPolicy, String> {
        let default = PolicyRules {
            features: self.features.clone(),
            outputs: self.outputs,
            text: self.text,
            identifiers: self.identifiers,
            review_input: self.review_input,
        };
        let hashes =
            std::iter::once(&default).chain(self.models.values()).any(|r| r.identifiers == Some(Identifiers::Hashed));
        let key = match (&self.identifier_key_file, hashes) {
            (Some(file), _) => {
                let key = std::fs::read(file)
                    .map_err(|e| format!("logging.policy.identifier_key_file {}: {e}", file.display()))?;
                if key.len() < MIN_KEY_BYTES {
                    return Err(format!(
                        "logging.policy.identifier_key_file {} holds {} bytes: use at least {MIN_KEY_BYTES} random bytes (head -c 32 /dev/urandom > FILE)",
                        file.display(),
                        key.len()
                    ));
                }
                Some(key)
            }
            (None, true) => {
                return Err("logging.policy: identifiers = \"hashed\" needs identifier_key_file".into());
            }
            (None, false) => None,
        };
        let resolve = |rules: &PolicyRules| ModelPolicy {
            features: rules.features.clone().or_else(|| default.features.clone()),
            outputs: rules.outputs.or(default.outputs).unwrap_or(OutputDetail::Full),
            text: rules.text.or(default.text).unwrap_or(true),
            identifiers: rules.identifiers.or(default.identifiers).unwrap_or(Identifiers::Plain),
            review_input: rules.review_input.or(default.review_input).unwrap_or(true),
        };
        Ok(LogPolicy {
            default: resolve(&PolicyRules::default()),
            models: self.models.iter().map(|(name, rules)| (name.clone(), resolve(rules))).collect(),
            key,
        })
    }
}

/// One model's rules, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPolicy {
    pub features: Option<Vec<String>>,
    pub outputs: OutputDetail,
    pub text: bool,
    pub identifiers: Identifiers,
    pub review_input: bool,
}

impl ModelPolicy {
    fn keeps_feature(&self, name: &str) -> bool {
        self.features.as_ref().is_none_or(|kept| {
            kept.iter().any(|k| match k.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => k == name,
            })
        })
    }
}

/// Every model's rules and the identifier key, ready to apply.
#[derive(Debug, Clone)]
pub struct LogPolicy {
    default: ModelPolicy,
    models: BTreeMap<String, ModelPolicy>,
    key: Option<Vec<u8>>,
}

impl Default for LogPolicy {
    /// Everything logged, identifiers as given.
    fn default() -> Self {
        LogPolicyConfig::default().load().expect("the default policy needs no key")
    }
}

impl LogPolicy {
    /// The rules for `model`.
    pub fn for_model(&self, model: &str) -> &ModelPolicy {
        self.models.get(model).unwrap_or(&self.default)
    }

    /// Whether the policy changes nothing (records pass untouched).
    pub fn is_passthrough(&self) -> bool {
        let all = |p: &ModelPolicy| {
            p.features.is_none()
                && p.outputs == OutputDetail::Full
                && p.text
                && p.identifiers == Identifiers::Plain
                && p.review_input
        };
        all(&self.default) && self.models.values().all(all)
    }

    /// `id` as the default policy logs it (e.g. a record's Kafka key).
    pub fn identifier(&self, id: &str) -> String {
        self.identifier_under(self.default.identifiers, id)
    }

    fn identifier_under(&self, rule: Identifiers, id: &str) -> String {
        match (rule, &self.key) {
            _ if id.is_empty() => String::new(),
            (Identifiers::Plain, _) => id.to_string(),
            (Identifiers::Omitted, _) => String::new(),
            (Identifiers::Hashed, Some(key)) => hashed_identifier(key, id),
            // `load` refuses hashing without a key; omit rather than leak.
            (Identifiers::Hashed, None) => String::new(),
        }
    }

    /// Applies the record's model's rules to `record`.
    pub fn apply(&self, record: &mut PredictionRecord) {
        let policy = self.for_model(&record.model_name);
        record.features.retain(|f| policy.keeps_feature(&f.name));
        if let Some(output) = record.output.as_mut() {
            match policy.outputs {
                OutputDetail::Full => {}
                OutputDetail::Label => {
                    output.scores.clear();
                    output.class_scores.clear();
                }
                OutputDetail::None => {
                    *output = PredictionOutput { is_null: output.is_null, ..Default::default() };
                }
            }
            if !policy.text {
                output.text.clear();
            }
        }
        for id in [&mut record.station_id, &mut record.device_id, &mut record.part_id, &mut record.request_id] {
            *id = self.identifier_under(policy.identifiers, id);
        }
        if let Some(review) = record.review.as_mut()
            && !policy.review_input
        {
            review.input.clear();
            review.content_type.clear();
        }
    }

    /// Applies the default identifier rule to a feedback event's session id.
    pub fn apply_feedback(&self, event: &mut FeedbackEvent) {
        event.session_id = self.identifier(&event.session_id);
    }
}

/// The logged form of `id` under `key`: `h:` and the first 128 bits of its HMAC-SHA-256, hex.
/// `vigil forget` computes the same to find a subject's hashed records.
pub fn hashed_identifier(key: &[u8], id: &str) -> String {
    let mut hash = vigil_capture::keyed_hash(key, id);
    hash.truncate(32);
    format!("h:{hash}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_proto::vigil::v1::{ClassScore, Feature, ReviewRequest};

    fn record(model: &str) -> PredictionRecord {
        let feature = |name: &str| Feature { name: name.into(), value: 1.0, ..Default::default() };
        PredictionRecord {
            model_name: model.into(),
            station_id: "line-3".into(),
            device_id: "cam-7".into(),
            part_id: "part-42".into(),
            request_id: "req-1".into(),
            features: vec![feature("brightness"), feature("contrast"), feature("image.mean"), feature("image.std")],
            output: Some(PredictionOutput {
                label: "defect".into(),
                scores: vec![0.9],
                class_scores: vec![ClassScore { name: "defect".into(), score: 0.9 }],
                text: "a transcript".into(),
                verdict: 2,
                ..Default::default()
            }),
            review: Some(ReviewRequest {
                input: vec![1, 2, 3],
                content_type: "image/png".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn key_file(dir: &tempfile::TempDir, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join("key");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn names(r: &PredictionRecord) -> Vec<&str> {
        r.features.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn the_default_policy_changes_nothing() {
        let policy = LogPolicy::default();
        assert!(policy.is_passthrough());
        let mut r = record("m");
        policy.apply(&mut r);
        assert_eq!(r, record("m"));
    }

    #[test]
    fn model_rules_override_the_default_field_by_field() {
        let dir = tempfile::tempdir().unwrap();
        let config: LogPolicyConfig = toml::from_str(&format!(
            r#"
            identifiers = "hashed"
            identifier_key_file = {:?}
            text = false
            [models.asr]
            features = ["image.*", "brightness"]
            outputs = "label"
            review_input = false
            [models.plain]
            identifiers = "plain"
            outputs = "none"
            "#,
            key_file(&dir, b"0123456789abcdef0123").display().to_string()
        ))
        .unwrap();
        let policy = config.load().unwrap();
        assert!(!policy.is_passthrough());

        let mut asr = record("asr");
        policy.apply(&mut asr);
        assert_eq!(names(&asr), ["brightness", "image.mean", "image.std"]);
        let output = asr.output.as_ref().unwrap();
        assert_eq!((output.label.as_str(), output.verdict), ("defect", 2));
        assert!(output.scores.is_empty() && output.class_scores.is_empty() && output.text.is_empty());
        let review = asr.review.as_ref().unwrap();
        assert!(review.input.is_empty() && review.content_type.is_empty());
        // Hashed with the key: stable, not the id, distinct per id; `identifier` agrees.
        let expected = hashed_identifier(b"0123456789abcdef0123", "line-3");
        assert_eq!(asr.station_id, expected);
        assert_eq!(policy.identifier("line-3"), expected);
        assert!(expected.starts_with("h:") && expected.len() == 34 && !expected.contains("line"));
        assert_ne!(asr.device_id, asr.station_id);
        assert_ne!(hashed_identifier(b"another key of 16+ bytes", "line-3"), expected);

        let mut plain = record("plain");
        policy.apply(&mut plain);
        assert_eq!(plain.station_id, "line-3");
        assert_eq!(names(&plain).len(), 4, "features from the default: all");
        assert_eq!(plain.output, Some(PredictionOutput::default()));
        assert_eq!(plain.review.as_ref().unwrap().input, [1, 2, 3]);

        let mut other = record("other");
        policy.apply(&mut other);
        assert_eq!(other.output.as_ref().unwrap().scores, [0.9]);
        assert!(other.output.as_ref().unwrap().text.is_empty());
        assert_eq!(other.part_id, hashed_identifier(b"0123456789abcdef0123", "part-42"));
    }

    #[test]
    fn omitted_identifiers_and_empty_feature_lists() {
        let config: LogPolicyConfig = toml::from_str("identifiers = \"omitted\"\nfeatures = []\n").unwrap();
        let policy = config.load().unwrap();
        let mut r = record("m");
        policy.apply(&mut r);
        assert!(r.features.is_empty());
        assert!(r.station_id.is_empty() && r.device_id.is_empty() && r.part_id.is_empty() && r.request_id.is_empty());
        let mut event = FeedbackEvent { session_id: "s-1".into(), ..Default::default() };
        policy.apply_feedback(&mut event);
        assert!(event.session_id.is_empty());
    }

    #[test]
    fn hashing_needs_a_long_enough_key() {
        let config: LogPolicyConfig = toml::from_str("[models.m]\nidentifiers = \"hashed\"\n").unwrap();
        assert!(config.load().unwrap_err().contains("needs identifier_key_file"));
        let dir = tempfile::tempdir().unwrap();
        let short = LogPolicyConfig { identifier_key_file: Some(key_file(&dir, b"short")), ..config.clone() };
        assert!(short.load().unwrap_err().contains("holds 5 bytes"));
        let missing = LogPolicyConfig { identifier_key_file: Some("/nonexistent/key".into()), ..config };
        assert!(missing.load().unwrap_err().contains("/nonexistent/key"));
        let unknown: Result<LogPolicyConfig, _> = toml::from_str("identifier = \"hashed\"\n");
        assert!(unknown.is_err(), "a misspelt key is refused");
    }
}
