use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Upstream;

/// Trailer written after the client's EOF unless [`TcpEchoBuilder::trailer`] sets another.
pub const DEFAULT_TRAILER: &[u8] = b"\n-- end of echo --\n";

/// Builds a TCP echo server.
#[derive(Clone, Debug)]
pub struct TcpEchoBuilder {
    name: String,
    trailer: Vec<u8>,
}

impl Default for TcpEchoBuilder {
    fn default() -> Self {
        Self { name: "tcp-echo".into(), trailer: DEFAULT_TRAILER.to_vec() }
    }
}

impl TcpEchoBuilder {
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// Bytes written once the client has shut down its write side.
    pub fn trailer(mut self, trailer: &[u8]) -> Self {
        self.trailer = trailer.to_vec();
        self
    }

    pub async fn start(self) -> Upstream {
        let trailer: std::sync::Arc<[u8]> = self.trailer.into();
        super::serve(self.name, move |mut stream, _log| {
            let trailer = trailer.clone();
            async move {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
                // EOF from the client: the write side is still ours.
                if stream.write_all(&trailer).await.is_ok() {
                    let _ = stream.shutdown().await;
                }
            }
        })
        .await
    }
}
