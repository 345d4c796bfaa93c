//! Headless Chromium driven over the DevTools protocol: open a page, evaluate JavaScript in it
//! (click a button, read the DOM), wait for a condition. `./dev setup` installs Debian's
//! chromium; `VIGIL_CHROMIUM` names another binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// A headless Chromium with one page open, killed when dropped.
pub struct Chromium {
    child: Child,
    _profile: tempfile::TempDir,
    port: u16,
}

/// A page of a [`Chromium`], over its DevTools WebSocket.
pub struct Page {
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next_id: u64,
}

impl Chromium {
    /// Starts Chromium on `url`; panics, saying what to do, when it is not installed.
    pub fn launch(url: &str) -> Chromium {
        let binary = std::env::var("VIGIL_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            std::path::Path::new(&binary).exists(),
            "headless Chromium not found at {binary}: install Debian's chromium (./dev setup does) or set VIGIL_CHROMIUM"
        );
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(&binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-port=0",
                "--window-size=1400,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/..."
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut port = None;
        let mut seen = String::new();
        let mut line = String::new();
        while port.is_none() && stderr.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                port = rest.split('/').next().and_then(|p| p.parse().ok());
            }
            seen.push_str(&line);
            line.clear();
        }
        let port = port.unwrap_or_else(|| panic!("chromium printed no DevTools address:\n{seen}"));
        // Keep draining its log so that it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Chromium { child, _profile: profile, port }
    }

    /// The page opened at launch.
    pub async fn page(&self) -> Page {
        let deadline = Instant::now() + Duration::from_secs(10);
        let url = loop {
            let targets = self.get("/json/list");
            let page = targets.as_array().into_iter().flatten().find(|t| t["type"] == "page");
            if let Some(ws) = page.and_then(|t| t["webSocketDebuggerUrl"].as_str()) {
                break ws.to_string();
            }
            assert!(Instant::now() < deadline, "chromium opened no page: {targets}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let connecting = tokio_tungstenite::connect_async(url);
        let (socket, _) = tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .expect("the page's DevTools did not answer in 10 s")
            .expect("connect to the page's DevTools");
        Page { socket, next_id: 1 }
    }

    /// `GET path` on the DevTools HTTP endpoint, as JSON.
    fn get(&self, path: &str) -> Value {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("DevTools endpoint");
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n", self.port).unwrap();
        // Chromium keeps the connection open: read the head, then Content-Length bytes.
        let mut reader = BufReader::new(stream);
        let mut length = 0;
        let mut line = String::new();
        while reader.read_line(&mut line).expect("DevTools response") > 2 {
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
            line.clear();
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("DevTools response body");
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Page {
    /// Evaluates `expression` in the page (awaiting a promise) and returns its value; panics
    /// when the page has not answered within 10 s.
    pub async fn eval(&mut self, expression: &str) -> Value {
        match tokio::time::timeout(Duration::from_secs(10), self.evaluate(expression)).await {
            Ok(value) => value,
            Err(_) => panic!("{expression}: no answer from the page in 10 s"),
        }
    }

    async fn evaluate(&mut self, expression: &str) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let call = json!({ "id": id, "method": "Runtime.evaluate",
                           "params": { "expression": expression, "awaitPromise": true, "returnByValue": true } });
        self.socket.send(Message::text(call.to_string())).await.expect("send to DevTools");
        while let Some(message) = self.socket.next().await {
            let Ok(Message::Text(text)) = message else { continue };
            let reply: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if reply["id"] == id {
                if let Some(exception) = reply["result"].get("exceptionDetails") {
                    panic!("{expression}: {exception}");
                }
                return reply["result"]["result"]["value"].clone();
            }
        }
        panic!("DevTools closed the connection")
    }

    /// Evaluates `expression` until it is truthy (then returns it), or panics after `timeout`.
    pub async fn wait_for(&mut self, expression: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.eval(expression).await;
            if !(value.is_null() || value == false || value == "" || value == 0) {
                return value;
            }
            assert!(Instant::now() < deadline, "{expression} still false after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
