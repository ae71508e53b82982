//! A packet sniffer for tests: an `AF_PACKET` raw socket on one interface of the root network
//! namespace (a test [`Bridge`](crate::Bridge), in promiscuous mode so frames the bridge
//! forwards between two pods are seen too, or a pod's host-side veth), recording every frame
//! while a closure runs. No tcpdump, no libpcap.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! # let bridge = mesh_tests::Bridge::new(39)?;
//! let (_, capture) = mesh_tests::sniff::sniff(bridge.name(), || {
//!     // traffic between pods on the bridge
//! })?;
//! assert!(!capture.contains(b"secret"), "{}", capture.summary());
//! assert!(capture.tcp_to_port(15008) > 0);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};

const ETH_P_ALL: u16 = 0x0003;
const SOL_PACKET: libc::c_int = 263;
const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
const PACKET_STATISTICS: libc::c_int = 6;
const PACKET_MR_PROMISC: libc::c_ushort = 1;
/// `sll_pkttype` of a frame this host sent.
const PACKET_OUTGOING: u8 = 4;
/// Frames can be GSO/GRO super-packets of up to 64 KiB (more with BIG TCP).
const FRAME_BUF: usize = 256 * 1024;
/// How long frames of the closure's last packets may take to reach the socket.
const GRACE: Duration = Duration::from_millis(200);

#[repr(C)]
struct PacketMreq {
    mr_ifindex: libc::c_int,
    mr_type: libc::c_ushort,
    mr_alen: libc::c_ushort,
    mr_address: [u8; 8],
}

#[repr(C)]
#[derive(Default)]
struct TpacketStats {
    tp_packets: libc::c_uint,
    tp_drops: libc::c_uint,
}

/// Records the frames on interface `ifname` while `f` runs (plus a short grace period for
/// frames still in flight), and returns `f`'s result with what was seen.
pub fn sniff<T>(ifname: &str, f: impl FnOnce() -> T) -> Result<(T, Capture)> {
    let sniffer = Sniffer::start(ifname)?;
    let value = f();
    std::thread::sleep(GRACE);
    Ok((value, sniffer.stop()?))
}

/// A running capture; [`Sniffer::stop`] ends it and returns what it saw. Dropping it without
/// stopping ends the capture too.
pub struct Sniffer {
    ifname: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Recorded>>>,
}

/// The frames a recorder thread saw, and how many the kernel dropped.
type Recorded = (Vec<Frame>, u64);

impl Sniffer {
    /// Opens the socket, binds it to `ifname` (promiscuous) and starts recording. Frames sent
    /// after this returns are recorded.
    pub fn start(ifname: &str) -> Result<Sniffer> {
        let fd = open(ifname).with_context(|| format!("sniffing on {ifname}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("sniff-{ifname}"))
            .spawn(move || record(fd, &flag))?;
        Ok(Sniffer {
            ifname: ifname.to_owned(),
            stop,
            thread: Some(thread),
        })
    }

    /// Stops recording and returns the capture. Fails if the kernel dropped frames (the
    /// capture would be incomplete, so "not seen" would mean nothing).
    pub fn stop(mut self) -> Result<Capture> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("stopped once");
        let (frames, drops) = thread
            .join()
            .map_err(|_| anyhow::anyhow!("sniffer thread panicked"))??;
        if drops > 0 {
            bail!(
                "the kernel dropped {drops} frames on {} (of {} recorded): the capture is incomplete",
                self.ifname,
                frames.len()
            );
        }
        Ok(Capture { frames })
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open(ifname: &str) -> Result<OwnedFd> {
    let name = CString::new(ifname)?;
    // SAFETY: plain syscalls on an fd we own; every pointer passed points at a live local of
    // the size given.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        if ifindex == 0 {
            bail!("no interface {ifname}: {}", std::io::Error::last_os_error());
        }
        // Protocol 0: nothing is queued until bind() picks the protocol *and* the interface,
        // so frames of other interfaces never slip in.
        let raw = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if raw < 0 {
            bail!("socket(AF_PACKET): {}", std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(raw);
        let size: libc::c_int = 32 << 20;
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &size)
            .or_else(|_| setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &size))?;
        let tick = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tick)?;
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL.to_be();
        addr.sll_ifindex = ifindex as i32;
        if libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            bail!("bind to {ifname}: {}", std::io::Error::last_os_error());
        }
        // A bridge hands frames it forwards between its ports to its own device only when
        // promiscuous. The membership ends with the socket.
        let mreq = PacketMreq {
            mr_ifindex: ifindex as i32,
            mr_type: PACKET_MR_PROMISC,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        setsockopt(&fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mreq)?;
        // Reading the statistics resets them: start counting drops from here.
        drops(&fd)?;
        Ok(fd)
    }
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> Result<()> {
    // SAFETY: `value` is a live T of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!(
            "setsockopt({level}, {name}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Frames the kernel dropped since the last call (the counter resets when read).
fn drops(fd: &OwnedFd) -> Result<u64> {
    let mut stats = TpacketStats::default();
    let mut len = std::mem::size_of::<TpacketStats>() as libc::socklen_t;
    // SAFETY: `stats` and `len` are live locals of the sizes passed.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            SOL_PACKET,
            PACKET_STATISTICS,
            (&mut stats as *mut TpacketStats).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        bail!(
            "getsockopt(PACKET_STATISTICS): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(stats.tp_drops as u64)
}

fn record(fd: OwnedFd, stop: &AtomicBool) -> Result<Recorded> {
    let mut frames = Vec::new();
    let mut buf = vec![0u8; FRAME_BUF];
    let mut dropped = 0;
    let mut stopping_since = None;
    loop {
        // After a stop, drain for a moment, but never forever under continuous traffic.
        if stop.load(Ordering::Relaxed) {
            let since = *stopping_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > Duration::from_millis(100) {
                break;
            }
        }
        // SAFETY: `buf` and `from` are live and as large as passed.
        let (n, from) = unsafe {
            let mut from: libc::sockaddr_ll = std::mem::zeroed();
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            let n = libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut from_len,
            );
            (n, from)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => {
                    // Idle: only stop once the queue is drained.
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    continue;
                }
                _ => return Err(e).context("recvfrom on the packet socket"),
            }
        }
        let len = n as usize;
        if len > buf.len() {
            // Truncated: treat as a drop, the payload is incomplete.
            dropped += 1;
        }
        frames.push(Frame {
            outgoing: from.sll_pkttype == PACKET_OUTGOING,
            bytes: buf[..len.min(buf.len())].to_vec(),
        });
    }
    Ok((frames, dropped + drops(&fd)?))
}

/// One recorded frame (Ethernet header included).
#[derive(Clone, Debug)]
pub struct Frame {
    /// Sent by this host (as opposed to received or forwarded).
    pub outgoing: bool,
    pub bytes: Vec<u8>,
}

/// A TCP segment decoded from a frame.
#[derive(Clone, Debug)]
pub struct Segment {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// TCP flags (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
    pub flags: u8,
    pub seq: u32,
    pub payload: Vec<u8>,
}

/// What a [`sniff`] recorded.
#[derive(Debug, Default)]
pub struct Capture {
    frames: Vec<Frame>,
}

impl Capture {
    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    /// Every TCP segment (IPv4 and IPv6).
    pub fn segments(&self) -> Vec<Segment> {
        self.frames
            .iter()
            .filter_map(|f| parse_tcp(&f.bytes))
            .collect()
    }

    /// Whether `needle` appears anywhere: in any single frame, or in the payload of any TCP
    /// connection direction reassembled in sequence order (so a marker split across two
    /// segments is still found).
    pub fn contains(&self, needle: &[u8]) -> bool {
        if needle.is_empty() {
            return true;
        }
        self.frames.iter().any(|f| find(&f.bytes, needle))
            || self.streams().values().any(|s| find(s, needle))
    }

    /// TCP segments whose destination port is `port`.
    pub fn tcp_to_port(&self, port: u16) -> usize {
        self.segments()
            .iter()
            .filter(|s| s.dst.port() == port)
            .count()
    }

    /// TCP segments from or to `port`.
    pub fn tcp_with_port(&self, port: u16) -> usize {
        self.segments()
            .iter()
            .filter(|s| s.dst.port() == port || s.src.port() == port)
            .count()
    }

    /// Payload bytes of TCP segments to `port`.
    pub fn payload_to_port(&self, port: u16) -> usize {
        self.segments()
            .iter()
            .filter(|s| s.dst.port() == port)
            .map(|s| s.payload.len())
            .sum()
    }

    /// Connections (by their SYN without ACK) to `port`.
    pub fn syns_to_port(&self, port: u16) -> usize {
        self.segments()
            .iter()
            .filter(|s| s.dst.port() == port && s.flags & 0x12 == 0x02)
            .count()
    }

    /// The payload of each direction of each TCP connection, in sequence order, duplicates
    /// (retransmissions, or a frame seen on two ports) removed.
    pub fn streams(&self) -> BTreeMap<(SocketAddr, SocketAddr), Vec<u8>> {
        let mut by_flow: BTreeMap<(SocketAddr, SocketAddr), BTreeMap<u32, Vec<u8>>> =
            BTreeMap::new();
        for s in self.segments() {
            if !s.payload.is_empty() {
                let segs = by_flow.entry((s.src, s.dst)).or_default();
                let slot = segs.entry(s.seq).or_default();
                if s.payload.len() > slot.len() {
                    *slot = s.payload;
                }
            }
        }
        by_flow
            .into_iter()
            .map(|(flow, segs)| {
                // Sequence numbers are relative to the first one seen (they may wrap).
                let base = *segs.keys().next().expect("non-empty");
                let mut ordered: Vec<(u32, Vec<u8>)> = segs
                    .into_iter()
                    .map(|(seq, p)| (seq.wrapping_sub(base), p))
                    .collect();
                ordered.sort_by_key(|(off, _)| *off);
                let mut out = Vec::new();
                for (off, p) in ordered {
                    let off = off as usize;
                    if off >= out.len() {
                        out.extend_from_slice(&p);
                    } else if off + p.len() > out.len() {
                        out.extend_from_slice(&p[out.len() - off..]);
                    }
                }
                (flow, out)
            })
            .collect()
    }

    /// One line per TCP flow direction: endpoints, segments, payload bytes; for failure
    /// messages.
    pub fn summary(&self) -> String {
        let mut flows: BTreeMap<(SocketAddr, SocketAddr), (usize, usize)> = BTreeMap::new();
        for s in self.segments() {
            let e = flows.entry((s.src, s.dst)).or_default();
            e.0 += 1;
            e.1 += s.payload.len();
        }
        let mut out = format!("{} frames recorded", self.frames.len());
        for ((src, dst), (n, bytes)) in flows {
            out += &format!("\n  {src} -> {dst}: {n} segments, {bytes} payload bytes");
        }
        out
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Ethernet (optionally one VLAN tag) / IPv4 or IPv6 / TCP.
pub fn parse_tcp(frame: &[u8]) -> Option<Segment> {
    let mut ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let mut ip = frame.get(14..)?;
    if ethertype == 0x8100 {
        ethertype = u16::from_be_bytes([*frame.get(16)?, *frame.get(17)?]);
        ip = frame.get(18..)?;
    }
    let (src, dst, tcp) = match ethertype {
        0x0800 => {
            let ihl = (*ip.first()? as usize & 0x0f) * 4;
            if ip.get(9)? != &6 || ihl < 20 {
                return None;
            }
            let total = u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]) as usize;
            // 0 with GSO/BIG TCP: the frame's length is what counts.
            let end = if total == 0 {
                ip.len()
            } else {
                total.min(ip.len())
            };
            let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
            (src, dst, ip.get(ihl..end)?)
        }
        0x86dd => {
            if ip.get(6)? != &6 {
                return None;
            }
            let payload = u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]) as usize;
            let end = if payload == 0 {
                ip.len()
            } else {
                (40 + payload).min(ip.len())
            };
            let octets = |at: usize| -> Option<Ipv6Addr> {
                let b: [u8; 16] = ip.get(at..at + 16)?.try_into().ok()?;
                Some(Ipv6Addr::from(b))
            };
            (
                IpAddr::V6(octets(8)?),
                IpAddr::V6(octets(24)?),
                ip.get(40..end)?,
            )
        }
        _ => return None,
    };
    let sport = u16::from_be_bytes([*tcp.first()?, *tcp.get(1)?]);
    let dport = u16::from_be_bytes([*tcp.get(2)?, *tcp.get(3)?]);
    let seq = u32::from_be_bytes(tcp.get(4..8)?.try_into().ok()?);
    let offset = (*tcp.get(12)? as usize >> 4) * 4;
    let flags = *tcp.get(13)?;
    Some(Segment {
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        flags,
        seq,
        payload: tcp.get(offset..).unwrap_or_default().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet/IPv4/TCP frame from 10.0.0.1:1234 to 10.0.0.2:80 carrying `payload`.
    fn frame(seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + 20 + payload.len()) as u16;
        f.extend_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0,
            0,
            64,
            6,
            0,
            0,
        ]);
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend_from_slice(&[0x04, 0xd2, 0, 80]);
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0, 0x50, 0x18, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn finds_markers_split_across_segments() {
        let capture = Capture {
            frames: [
                frame(100, b"GET /mark"),
                frame(109, b"er-123 HTTP/1.1"),
                // a retransmission
                frame(100, b"GET /mark"),
            ]
            .into_iter()
            .map(|bytes| Frame {
                outgoing: false,
                bytes,
            })
            .collect(),
        };
        let s = capture.segments();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].src, "10.0.0.1:1234".parse().unwrap());
        assert_eq!(s[0].dst, "10.0.0.2:80".parse().unwrap());
        assert_eq!(s[0].payload, b"GET /mark");
        assert!(capture.contains(b"/marker-123 "));
        assert!(!capture.contains(b"marker-124"));
        assert_eq!(capture.tcp_to_port(80), 3);
        assert_eq!(capture.tcp_to_port(15008), 0);
        assert_eq!(capture.payload_to_port(80), 9 + 15 + 9);
    }
}
