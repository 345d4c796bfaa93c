//! An export's rows, read once from the prediction log into a file beside the datasets: one
//! consistent copy that the hash, the inputs and the writes all read (labels keep arriving in
//! the log meanwhile), never all of it in memory. What the checks and the manifest need is
//! tallied on the way in.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use vigil_proto::vigil::v1::{RecordStatus, Variant};
use vigil_store::{MAX_QUERY_ROWS, PredictionFilter, PredictionStore, PredictionSummary};

use crate::{Spec, Tally, off_the_async_threads, partial_dir};

/// Rows handed to a blocking thread at a time, to be tallied and written.
const ROWS_AT_ONCE: usize = MAX_QUERY_ROWS as usize;

/// One row as the dataset needs it: its numeric features only (others are missing), each as
/// `rows.csv` writes it (a number parsed again could come back a bit off in its last digit).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Row {
    pub id: Uuid,
    pub time: DateTime<Utc>,
    pub version: String,
    pub label: Option<String>,
    pub capture: String,
    pub features: BTreeMap<String, String>,
}

/// The rows of an export, on disk in id order, and what was tallied of them.
pub(crate) struct Snapshot {
    /// Removed with the snapshot (a crash leaves it to the next export's sweep).
    _dir: crate::PartialDir,
    path: PathBuf,
    pub rows: usize,
    pub tally: Tally,
    pub versions: BTreeSet<String>,
    /// The rows naming each captured input.
    pub captures: BTreeMap<String, usize>,
    /// The answers of each exported item several people labelled.
    pub panels: Vec<Vec<String>>,
}

impl Snapshot {
    /// Reads `spec`'s rows from the log: those that served (primary and canary; a shadow's copy
    /// of an item is not another item) and succeeded (a refused request has no inputs to learn
    /// from), in id order. `reviewed` holds every reviewer's answer by item.
    pub async fn take<S: PredictionStore>(
        store: &S,
        spec: &Spec,
        reviewed: HashMap<Uuid, Vec<String>>,
    ) -> Result<Self> {
        let dir = partial_dir(&spec.out, &format!(".{}.partial-rows-", spec.model))?;
        let path = dir.path().join("rows.jsonl");
        let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut taking = Some(Taking {
            file: std::io::BufWriter::new(file),
            snapshot: Self {
                _dir: dir,
                path,
                rows: 0,
                tally: Tally::default(),
                versions: BTreeSet::new(),
                captures: BTreeMap::new(),
                panels: Vec::new(),
            },
            reviewed,
        });
        let mut cursors = [Variant::Unspecified, Variant::Primary, Variant::Canary].map(|v| Cursor::new(spec, v));
        loop {
            let mut batch = Vec::new();
            while batch.len() < ROWS_AT_ONCE {
                match next_row(store, &mut cursors).await? {
                    Some(row) => batch.push(row),
                    None => break,
                }
            }
            let last = batch.len() < ROWS_AT_ONCE;
            let mut state = taking.take().expect("handed back after each batch");
            let state = off_the_async_threads(move || {
                state.add(batch)?;
                Ok(state)
            })
            .await?;
            spec.tell(crate::Progress::Rows(state.snapshot.rows));
            taking = Some(state);
            if last {
                break;
            }
        }
        let state = taking.expect("handed back after each batch");
        off_the_async_threads(move || state.finish()).await
    }

    /// The rows, in id order.
    pub fn rows(&self) -> Result<impl Iterator<Item = Result<Row>> + '_> {
        let file = std::fs::File::open(&self.path).with_context(|| format!("reading {}", self.path.display()))?;
        Ok(std::io::BufReader::new(file).lines().map(|line| Ok(serde_json::from_str(&line?)?)))
    }

    /// The distinct captured inputs' keys, in order.
    pub fn capture_keys(&self) -> Vec<String> {
        self.captures.keys().cloned().collect()
    }

    /// Writes `rows.csv` (id, time, version, `columns`, label and capture key; the inputs
    /// `lost` named by none) to `sink`; its hex sha256 and length.
    pub fn write_csv(&self, columns: &[String], lost: &BTreeSet<String>, sink: impl Write) -> Result<(String, u64)> {
        let mut csv = csv::Writer::from_writer(Hashing { sink, sha256: Sha256::new(), bytes: 0 });
        let mut header = vec!["prediction_id".to_string(), "time".into(), "model_version".into()];
        header.extend(columns.iter().cloned());
        header.extend(["label".to_string(), "capture".into()]);
        csv.write_record(&header)?;
        for row in self.rows()? {
            let r = row?;
            let mut record = vec![r.id.to_string(), r.time.to_rfc3339(), r.version];
            record.extend(columns.iter().map(|c| r.features.get(c).cloned().unwrap_or_default()));
            let capture = if lost.contains(&r.capture) { String::new() } else { r.capture };
            record.extend([r.label.unwrap_or_default(), capture]);
            csv.write_record(&record)?;
        }
        let mut hashing = csv.into_inner().map_err(|e| e.into_error()).context("writing rows.csv")?;
        hashing.sink.flush()?;
        Ok((hex::encode(hashing.sha256.finalize()), hashing.bytes))
    }
}

/// A snapshot being taken: its file open, what came before tallied.
struct Taking {
    file: std::io::BufWriter<std::fs::File>,
    snapshot: Snapshot,
    reviewed: HashMap<Uuid, Vec<String>>,
}

impl Taking {
    fn add(&mut self, rows: Vec<PredictionSummary>) -> Result<()> {
        let s = &mut self.snapshot;
        for r in rows {
            let features = r.features.as_object();
            let named = features.into_iter().flatten().map(|(name, value)| (name.as_str(), value.as_f64()));
            s.tally.add(named, r.label.as_deref());
            if !s.versions.contains(&r.model_version) {
                s.versions.insert(r.model_version.clone());
            }
            if !r.capture.is_empty() {
                *s.captures.entry(r.capture.clone()).or_default() += 1;
            }
            if let Some(answers) = self.reviewed.remove(&r.prediction_id)
                && answers.len() >= 2
            {
                s.panels.push(answers);
            }
            let row = Row {
                id: r.prediction_id,
                time: r.time,
                version: r.model_version,
                label: r.label,
                capture: r.capture,
                features: features
                    .into_iter()
                    .flatten()
                    .filter_map(|(name, value)| Some((name.clone(), value.as_f64()?.to_string())))
                    .collect(),
            };
            serde_json::to_writer(&mut self.file, &row)?;
            self.file.write_all(b"\n")?;
            s.rows += 1;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Snapshot> {
        self.file.flush().context("writing the rows' snapshot")?;
        Ok(self.snapshot)
    }
}

/// Passes bytes on to `sink`, hashing and counting them.
struct Hashing<W> {
    sink: W,
    sha256: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.sink.write(buf)?;
        self.sha256.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.sink.flush()
    }
}

/// One variant's rows, a page at a time.
struct Cursor {
    filter: PredictionFilter,
    page: VecDeque<PredictionSummary>,
    done: bool,
}

impl Cursor {
    fn new(spec: &Spec, variant: Variant) -> Self {
        let filter = PredictionFilter {
            since: Some(spec.since),
            until: Some(spec.until),
            model_name: Some(spec.model.clone()),
            model_version: spec.version.clone(),
            variant: Some(variant as i16),
            has_label: spec.only_labelled.then_some(true),
            limit: MAX_QUERY_ROWS,
            ..Default::default()
        };
        Self { filter, page: VecDeque::new(), done: false }
    }

    /// The next row that succeeded, reading the next page when this one is used up.
    async fn peek<S: PredictionStore>(&mut self, store: &S) -> Result<Option<&PredictionSummary>> {
        while self.page.is_empty() && !self.done {
            let page = store.query_predictions(&self.filter).await.context("reading the prediction log")?;
            match page.last() {
                None => self.done = true,
                Some(last) => {
                    self.filter.after = Some(last.prediction_id);
                    self.page = page.into_iter().filter(|r| r.status == RecordStatus::Ok as i16).collect();
                }
            }
        }
        Ok(self.page.front())
    }
}

/// The row with the lowest id of all the cursors' next ones.
async fn next_row<S: PredictionStore>(store: &S, cursors: &mut [Cursor]) -> Result<Option<PredictionSummary>> {
    let mut lowest: Option<(usize, Uuid)> = None;
    for (i, cursor) in cursors.iter_mut().enumerate() {
        if let Some(row) = cursor.peek(store).await?
            && lowest.is_none_or(|(_, id)| row.prediction_id < id)
        {
            lowest = Some((i, row.prediction_id));
        }
    }
    Ok(lowest.and_then(|(i, _)| cursors[i].page.pop_front()))
}
