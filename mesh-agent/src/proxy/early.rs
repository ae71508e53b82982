//! The app's first bytes, sent ahead with an HBONE CONNECT instead of after its answer (one
//! crossing less before the destination app gets them).
//!
//! They are read from the app's socket without waiting, only when an HBONE stream is about
//! to be opened, and kept for the whole connect attempt: if that endpoint refuses or fails,
//! the next one tried gets the same bytes (with its CONNECT, or written first on a plaintext
//! or same-node connection), so nothing the app sent is lost or reordered.

use std::os::fd::AsRawFd;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// At most this much is sent ahead: a request's headers or a TLS ClientHello fit, and it
/// stays far below an HBONE stream's flow-control window.
const MOST: usize = 16 * 1024;

pub struct Early<'a> {
    app: Option<&'a TcpStream>,
    read: Option<Bytes>,
}

impl<'a> Early<'a> {
    /// For the app connection `app`.
    pub fn from(app: &'a TcpStream) -> Early<'a> {
        Early {
            app: Some(app),
            read: None,
        }
    }

    /// Nothing to send ahead (the caller writes its own bytes once connected).
    pub fn none() -> Early<'static> {
        Early {
            app: None,
            read: None,
        }
    }

    /// The bytes to send ahead, read now if they have not been yet (empty when the app
    /// has sent nothing so far).
    pub fn take_ahead(&mut self) -> &Bytes {
        let app = self.app;
        self.read
            .get_or_insert_with(|| app.map(read_waiting).unwrap_or_default())
    }

    /// What was read from the app so far (the relay must not expect it on the socket).
    pub fn already_read(&self) -> &[u8] {
        self.read.as_deref().unwrap_or_default()
    }

    /// Writes what was read ahead to `upstream`, for a path that cannot carry it with its
    /// opening (plaintext, same node).
    pub async fn write_to(&self, upstream: &mut TcpStream) -> std::io::Result<()> {
        match self.already_read() {
            [] => Ok(()),
            bytes => upstream.write_all(bytes).await,
        }
    }
}

/// What is waiting in the socket's receive queue, without blocking. A direct `recv`, not
/// tokio's `try_read`: tokio may not have seen the socket readable yet and would not try.
/// Taking the bytes behind tokio's back loses no wake-up: data arriving later raises a new
/// edge for the relay's reads.
fn read_waiting(app: &TcpStream) -> Bytes {
    let mut buf = BytesMut::with_capacity(MOST);
    let spare = buf.spare_capacity_mut();
    // SAFETY: recv writes at most `spare.len()` bytes into the buffer's spare capacity.
    let n = unsafe {
        libc::recv(
            app.as_raw_fd(),
            spare.as_mut_ptr().cast(),
            spare.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n <= 0 {
        // Nothing yet (EAGAIN), or end of stream, which the relay's own read sees again. An
        // error (the app reset its connection) is reported once: the relay then reads end
        // of stream and ends the connection with a FIN instead of passing the reset on.
        return Bytes::new();
    }
    // SAFETY: recv initialised the first n bytes.
    unsafe { buf.set_len(n as usize) };
    buf.freeze()
}
