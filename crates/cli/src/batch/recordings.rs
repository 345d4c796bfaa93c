//! Recordings through voice search, several at once: the device-side VAD of `vigil speak` on
//! each, one JSON line per recording in input order; when the list says what was said, each
//! line and the summary carry the word error rate.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde::Serialize;
use vigil_speech::text;

use super::{BatchArgs, Cell, Table};
use crate::speak::{self, Spoken};

/// One recording to send, and what is known about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    pub path: PathBuf,
    /// The list's id for it, when it has an id column.
    pub id: Option<String>,
    /// What was said, when the list says.
    pub said: Option<String>,
}

/// The WAV files among `paths`, folders read one level deep, in name order within each.
pub fn from_paths(paths: &[PathBuf]) -> Result<Vec<Recording>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("wav")))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    if files.is_empty() {
        bail!("no .wav files found in the given paths");
    }
    Ok(files.into_iter().map(|path| Recording { path, id: None, said: None }).collect())
}

/// The recordings a table lists in its `path` column (relative paths from the table's folder),
/// with `id` and `text` (what was said) when it has those columns.
pub fn from_table(table: &Table, path: &Path) -> Result<Vec<Recording>> {
    let Some(paths) = table.column("path") else {
        bail!(
            "{}: a table of recordings needs a `path` column (columns: {}); to score its rows give --model",
            path.display(),
            table.columns.join(", ")
        );
    };
    let (ids, said) = (table.column("id"), table.column("text"));
    let base = path.parent().unwrap_or(Path::new("."));
    table
        .rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let Cell::Text(file) = &row[paths] else {
                bail!("{}: row {}: `path` is empty", path.display(), i + 1);
            };
            Ok(Recording {
                path: base.join(file),
                id: ids.and_then(|c| row[c].text()),
                said: said.and_then(|c| row[c].text()),
            })
        })
        .collect()
}

/// One output line: the recording's outcome and, when known, how far it was from what was said.
#[derive(Serialize)]
struct Line {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(flatten)]
    spoken: Spoken,
    #[serde(skip_serializing_if = "Option::is_none")]
    said: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    word_error_rate: Option<f64>,
}

pub async fn run(recordings: Vec<Recording>, args: &BatchArgs) -> Result<u8> {
    let options = &args.speak;
    let params = speak::vad_params(options)?;
    let vad = speak::load_vad(options)?;
    let client = speak::connect(&options.server).await?;
    let mut out = super::output(args.output.as_deref())?;
    let bar = super::progress(recordings.len(), "recordings");
    let started = Instant::now();
    let (mut failed, mut recorded, mut sent, mut errors, mut words) = (0usize, 0u64, 0u64, 0usize, 0usize);
    let mut outcomes = futures::stream::iter(&recordings)
        .map(|r| speak::speak_within_timeout(client.clone(), &vad, &r.path, params, options))
        .buffered(args.concurrency);
    let mut listed = recordings.iter();
    while let Some(spoken) = outcomes.next().await {
        let recording = listed.next().expect("one outcome per recording");
        failed += usize::from(spoken.error.is_some());
        recorded += spoken.recorded_ms;
        sent += spoken.sent_ms;
        let word_error_rate = recording.said.as_ref().filter(|_| spoken.error.is_none()).map(|said| {
            let (said, heard) = (text::normalise(said), text::normalise(&spoken.transcript));
            let said: Vec<&str> = said.split_whitespace().collect();
            let e = text::word_errors(&said, &heard.split_whitespace().collect::<Vec<_>>());
            (errors, words) = (errors + e, words + said.len());
            if said.is_empty() { f64::from(u8::from(e > 0)) } else { e as f64 / said.len() as f64 }
        });
        let line = Line { id: recording.id.clone(), spoken, said: recording.said.clone(), word_error_rate };
        writeln!(out, "{}", serde_json::to_string(&line).expect("serialisable"))?;
        bar.inc(1);
    }
    out.flush()?;
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let wer = if words > 0 {
        format!("; word error rate {:.3} over {words} words", errors as f64 / words as f64)
    } else {
        String::new()
    };
    eprintln!(
        "{} recordings in {elapsed:.1} s ({:.1}/s), {failed} failed; sent {:.0}% of {:.1} s recorded{wer}",
        recordings.len(),
        recordings.len() as f64 / elapsed,
        if recorded > 0 { 100.0 * sent as f64 / recorded as f64 } else { 0.0 },
        recorded as f64 / 1e3
    );
    Ok(if failed > 0 { crate::inspect::exit::FAILED } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_lists_recordings_beside_itself() {
        let table = Table {
            columns: vec!["id".into(), "path".into(), "text".into()],
            rows: vec![
                vec![Cell::Number(7.0), Cell::Text("a/1.wav".into()), Cell::Text("red shoes".into())],
                vec![Cell::Text("x".into()), Cell::Text("/abs/2.wav".into()), Cell::Missing],
            ],
        };
        let listed = from_table(&table, Path::new("/data/list.csv")).unwrap();
        assert_eq!(
            listed,
            [
                Recording { path: "/data/a/1.wav".into(), id: Some("7".into()), said: Some("red shoes".into()) },
                Recording { path: "/abs/2.wav".into(), id: Some("x".into()), said: None },
            ]
        );
        let no_path = Table { columns: vec!["age".into()], rows: vec![] };
        let e = from_table(&no_path, Path::new("t.csv")).unwrap_err().to_string();
        assert!(e.contains("needs a `path` column (columns: age)") && e.contains("--model"), "{e}");
    }
}
