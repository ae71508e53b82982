//! One direction of an L4 relay between two sockets: small messages through a buffer, bulk
//! transfers with splice(2).
//!
//! Most proxied connections carry a few small messages (a request and its answer, a health
//! check, one line of a protocol). For those a read and a write through a buffer are two
//! syscalls and need no pipe, where splice takes two calls per message plus a pipe per
//! direction (pipe2 and two closes): a profile of same-node connection churn had splice,
//! pipe2 and the pipes' closes at a quarter of the agent's time. Once a read fills the
//! buffer, the direction is a bulk transfer and stays on splice from then on: socket -> pipe
//! -> socket, no copies through the proxy's memory.
//!
//! The buffer belongs to the worker thread, not the connection: it is only borrowed between
//! a read and the write that follows it, with no await in between, so an idle connection
//! holds no buffer and no pipe. Bytes the destination cannot take at once (its send buffer
//! is full) are kept in a per-direction vector until written.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes one read may take in copy mode; a read that fills it switches the direction to
/// splice. 16 KiB holds any ordinary request or answer and is cheap to copy.
const COPY_BUFFER: usize = 16 * 1024;

/// Most bytes moved per splice call (the default pipe capacity).
const SPLICE_CHUNK: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; COPY_BUFFER].into_boxed_slice());
}

/// How a direction of a relay stopped, with the bytes it moved.
pub enum Flow {
    Ended(u64),
    Paused(u64),
}

impl From<Flow> for u64 {
    fn from(flow: Flow) -> u64 {
        match flow {
            Flow::Ended(bytes) | Flow::Paused(bytes) => bytes,
        }
    }
}

/// Moves `from`'s bytes to `to` until end of stream, then half-closes `to` so the far side
/// sees the end too; or, once `pause` resolves, stops before the next read with everything
/// read already written. Returns the bytes moved (also on error).
pub async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    pause: impl Future<Output = ()>,
) -> Result<Flow, (u64, io::Error)> {
    let mut moved = 0u64;
    let mut pipe: Option<Pipe> = None;
    tokio::pin!(pause);
    loop {
        // Nothing read is unwritten here. The pause first, or a busy connection would never
        // stop for it.
        tokio::select! {
            biased;
            _ = &mut pause => return Ok(Flow::Paused(moved)),
            readable = from.readable() => readable.map_err(|e| (moved, e))?,
        }
        let step = match &pipe {
            None => copy_once(from, to).await,
            Some(pipe) => splice_once(from, to, pipe).await,
        };
        match step {
            Ok(Step::Moved { bytes, bulk }) => {
                moved += bytes as u64;
                if bulk && pipe.is_none() {
                    pipe = Some(Pipe::new().map_err(|e| (moved, e))?);
                }
            }
            Ok(Step::NotReady) => {}
            Ok(Step::End) => break,
            Err(Failed::Reading(e)) => {
                shutdown_write(to);
                return Err((moved, e));
            }
            Err(Failed::Writing(e)) => return Err((moved, e)),
        }
    }
    shutdown_write(to);
    Ok(Flow::Ended(moved))
}

/// What one read-then-write did.
enum Step {
    /// `bytes` read and written; `bulk` when the read took all it could (more was waiting).
    Moved { bytes: usize, bulk: bool },
    /// Nothing to read after all (readiness was stale).
    NotReady,
    /// The source's end of stream.
    End,
}

/// Which side failed: a failed read still passes the end on to the destination.
enum Failed {
    Reading(io::Error),
    Writing(io::Error),
}

/// Reads once into the thread's buffer and writes what it got; what the destination does
/// not take at once is kept and written before returning.
async fn copy_once(from: &TcpStream, to: &TcpStream) -> Result<Step, Failed> {
    let mut rest = Vec::new();
    let read = SCRATCH.with_borrow_mut(|buffer| {
        let n = match from.try_read(buffer) {
            Ok(0) => return Ok(Step::End),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::NotReady),
            Err(e) => return Err(Failed::Reading(e)),
        };
        let written = match to.try_write(&buffer[..n]) {
            Ok(written) => written,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(Failed::Writing(e)),
        };
        rest.extend_from_slice(&buffer[written..n]);
        Ok(Step::Moved {
            bytes: n,
            bulk: n == buffer.len(),
        })
    })?;
    let mut unwritten = &rest[..];
    while !unwritten.is_empty() {
        to.writable().await.map_err(Failed::Writing)?;
        match to.try_write(unwritten) {
            Ok(n) => unwritten = &unwritten[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Failed::Writing(e)),
        }
    }
    Ok(read)
}

/// Splices once from `from` into the (empty) pipe, then all of it on to `to`.
async fn splice_once(from: &TcpStream, to: &TcpStream, pipe: &Pipe) -> Result<Step, Failed> {
    let filled = match from.try_io(Interest::READABLE, || {
        splice(from.as_raw_fd(), pipe.write.as_raw_fd(), SPLICE_CHUNK)
    }) {
        Ok(0) => return Ok(Step::End),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::NotReady),
        Err(e) => return Err(Failed::Reading(e)),
    };
    let mut in_pipe = filled;
    while in_pipe > 0 {
        to.writable().await.map_err(Failed::Writing)?;
        match to.try_io(Interest::WRITABLE, || {
            splice(pipe.read.as_raw_fd(), to.as_raw_fd(), in_pipe)
        }) {
            Ok(n) => in_pipe -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Failed::Writing(e)),
        }
    }
    Ok(Step::Moved {
        bytes: filled,
        bulk: true,
    })
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: fds is a valid out array of two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 returned two new descriptors that nobody else owns.
        Ok(unsafe {
            Pipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        })
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain syscall on descriptors owned by the caller; null offsets (streams).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn shutdown_write(stream: &TcpStream) {
    // SAFETY: valid socket; failure (already closed) is harmless.
    unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) };
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Both ends of a new loopback TCP connection.
    pub async fn connected() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    /// Small messages back and forth stay in copy mode and arrive whole and in order.
    #[tokio::test]
    async fn small_messages_go_through_the_buffer_in_order() {
        let ((mut a1, a2), (b1, mut b2)) = (connected().await, connected().await);
        let forward = pump(&a2, &b1, std::future::pending());
        let back = pump(&b1, &a2, std::future::pending());
        let conversation = async {
            for i in 0..500u32 {
                let message = [i.to_le_bytes(), i.to_be_bytes()].concat();
                a1.write_all(&message).await.unwrap();
                let mut got = [0u8; 8];
                b2.read_exact(&mut got).await.unwrap();
                assert_eq!(got[..], message[..]);
                b2.write_all(&got[..4]).await.unwrap();
                a1.read_exact(&mut got[..4]).await.unwrap();
                assert_eq!(got[..4], i.to_le_bytes());
            }
            a1.shutdown().await.unwrap();
            b2.shutdown().await.unwrap();
        };
        let (forward, back, ()) = tokio::join!(forward, back, conversation);
        assert!(matches!(forward, Ok(Flow::Ended(4000))));
        assert!(matches!(back, Ok(Flow::Ended(2000))));
    }

    /// A message the destination's full send buffer cannot take at once is kept and written
    /// whole once the far side reads; the read is not taken for a bulk transfer.
    #[tokio::test]
    async fn a_message_the_destination_cannot_take_yet_is_written_whole() {
        let ((mut a1, a2), (b1, mut b2)) = (connected().await, connected().await);
        let mut queued = 0usize;
        while let Ok(n) = b1.try_write(&[0u8; 65536]) {
            queued += n;
        }
        a1.write_all(&[9u8; 10_000]).await.unwrap();
        a2.readable().await.unwrap();
        let reader = async {
            let mut got = vec![0u8; queued + 10_000];
            b2.read_exact(&mut got).await.unwrap();
            got.split_off(queued)
        };
        let (step, message) = tokio::join!(copy_once(&a2, &b1), reader);
        assert!(matches!(
            step,
            Ok(Step::Moved {
                bytes: 10_000,
                bulk: false
            })
        ));
        assert_eq!(message, vec![9u8; 10_000]);
    }
}
