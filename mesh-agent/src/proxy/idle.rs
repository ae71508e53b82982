//! Idle timeout of relayed TCP connections (`connectionPool.idleTimeoutMs` of the service,
//! else MeshConfig `idleTimeoutMs`, one hour by default, as Istio's): a connection that
//! moved no byte either way for that long is closed.
//!
//! The relay copies with splice and counts nothing per transfer, so the check reads the
//! kernel's own counters of the app's socket (`TCP_INFO` bytes received and acked) a few
//! times per period instead: no cost on the data path, one timer per connection.

use std::os::fd::RawFd;
use std::time::Duration;

/// How many times per idle period the counters are read: a connection is closed between
/// `idle` and `idle` plus a quarter of it after its last byte.
const CHECKS_PER_PERIOD: u32 = 4;

/// Resolves once the TCP socket `fd` has moved no byte for `idle`. The caller keeps the
/// socket open while this runs (it polls this beside the relay that owns the socket, and
/// drops both together). If the counters can't be read, it never resolves.
pub async fn idle_for(fd: RawFd, idle: Duration) {
    let step = (idle / CHECKS_PER_PERIOD).max(Duration::from_millis(10));
    let mut last = bytes_moved(fd);
    let mut quiet = Duration::ZERO;
    loop {
        tokio::time::sleep(step).await;
        let now = bytes_moved(fd);
        if now.is_none() || now != last {
            last = now;
            quiet = Duration::ZERO;
            continue;
        }
        quiet += step;
        if quiet >= idle {
            return;
        }
    }
}

/// Bytes the socket received plus bytes it sent that were acknowledged.
fn bytes_moved(fd: RawFd) -> Option<u64> {
    // SAFETY: tcp_info is plain data; the kernel fills at most `len` bytes of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt on a descriptor the caller keeps open, into a buffer of `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then(|| info.tcpi_bytes_received + info.tcpi_bytes_acked)
}

/// The idle timeout for a connection to `service` (None: not a service) under `snapshot`.
pub fn timeout_for(snapshot: &mesh_api::Snapshot, service: Option<&mesh_api::Service>) -> Duration {
    let ms = service
        .and_then(|s| s.spec.connection_pool.as_ref())
        .and_then(|p| p.idle_timeout_ms)
        .unwrap_or(snapshot.mesh_config().idle_timeout_ms);
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_quiet_connection_is_idle_and_a_busy_one_is_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&server);
        let idle = Duration::from_millis(200);
        // Busy: a byte every 50 ms for 600 ms keeps it from resolving.
        let busy = async {
            for _ in 0..12 {
                client.write_all(b"x").await.unwrap();
                let mut b = [0u8; 1];
                server.read_exact(&mut b).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            _ = idle_for(fd, idle) => panic!("a busy connection counted as idle"),
            _ = busy => {}
        }
        let started = std::time::Instant::now();
        idle_for(fd, idle).await;
        let waited = started.elapsed();
        assert!(waited >= idle && waited < idle * 2, "{waited:?}");
    }
}
