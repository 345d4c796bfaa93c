//! A TCP relay whose link a test can silence: while held, both ends stay connected and hear
//! nothing (as behind a network partition that drops every packet); once let go, what was sent
//! meanwhile arrives in order.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A relay on a free loopback port to one target; stops when dropped.
pub struct Relay {
    addr: SocketAddr,
    held: watch::Sender<bool>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays every connection made to [`Relay::addr`] to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the relay");
        let addr = listener.local_addr().expect("the relay's address");
        let (held, watching) = watch::channel(false);
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else { continue };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pass(client_read, server_write, watching.clone()));
                tokio::spawn(pass(server_read, client_write, watching.clone()));
            }
        });
        Relay { addr, held, accepting }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Silences every connection, open or opened later, until [`Relay::release`].
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Passes what was held and what comes after.
    pub fn release(&self) {
        self.held.send_replace(false);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Copies `from` to `to`, holding each chunk, and the end, while `held`.
async fn pass(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, mut held: watch::Receiver<bool>) {
    let mut buffer = vec![0; 16 << 10];
    loop {
        let read = from.read(&mut buffer).await;
        if held.wait_for(|held| !held).await.is_err() {
            break;
        }
        match read {
            Ok(n) if n > 0 && to.write_all(&buffer[..n]).await.is_ok() => {}
            // Dropping `to` passes the end on.
            _ => break,
        }
    }
}
