//! A recipe's output cut into lines for the job's log: a line ends at `\n` or at `\r` (a
//! progress bar that redraws itself is a line per redraw, not one line growing for an epoch),
//! and a line longer than [`MAX_LINE_BYTES`] keeps its start, marked as cut.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// The longest line kept whole.
pub const MAX_LINE_BYTES: usize = 2048;

/// Splits bytes into lines as they arrive.
#[derive(Default)]
pub struct Lines {
    line: Vec<u8>,
    cut: bool,
}

impl Lines {
    /// The lines `bytes` completes (empty lines skipped).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut done = Vec::new();
        for &byte in bytes {
            match byte {
                b'\n' | b'\r' => done.extend(self.take()),
                _ if self.line.len() < MAX_LINE_BYTES => self.line.push(byte),
                _ => self.cut = true,
            }
        }
        done
    }

    /// The last line, when the output did not end with a line break.
    pub fn finish(mut self) -> Option<String> {
        self.take()
    }

    fn take(&mut self) -> Option<String> {
        let mut line = String::from_utf8_lossy(&self.line).into_owned();
        if std::mem::take(&mut self.cut) {
            line.push_str(" [line cut]");
        }
        self.line.clear();
        (!line.is_empty()).then_some(line)
    }
}

/// Sends `stream`'s lines to `tx` until the stream ends or the receiver leaves.
pub async fn forward(stream: impl AsyncRead + Unpin, tx: tokio::sync::mpsc::Sender<String>) {
    let mut reader = BufReader::new(stream);
    let mut lines = Lines::default();
    loop {
        let read = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(bytes) => {
                let done = lines.push(bytes);
                (done, bytes.len())
            }
        };
        let (done, consumed) = read;
        reader.consume(consumed);
        for line in done {
            if tx.send(line).await.is_err() {
                return;
            }
        }
    }
    if let Some(line) = lines.finish() {
        let _ = tx.send(line).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carriage_returns_end_lines_and_long_lines_are_cut() {
        let mut lines = Lines::default();
        assert_eq!(lines.push(b"epoch 1\n 10%\r 20%"), ["epoch 1", " 10%"]);
        assert_eq!(lines.push(b"\r\ndone"), [" 20%"], "a CRLF is one line break");
        assert_eq!(lines.finish().as_deref(), Some("done"));

        let mut lines = Lines::default();
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        assert!(lines.push(&long).is_empty());
        let out = lines.push(b"\nnext\n");
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], format!("{} [line cut]", "x".repeat(MAX_LINE_BYTES)));
        assert_eq!(out[1], "next");
    }
}
