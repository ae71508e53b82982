//! The HBONE port (15008) of a pod: handshake slots and connections that never send a request.

use super::*;

/// Two nodes with pod `b` in the mesh (serving `web`) and `extra` pods outside it.
fn two_nodes(extra: &[PodDef]) -> TwoNodes {
    let mut builder = TwoNodes::builder().pod(PodDef::mesh("b", 0, "web"));
    for pod in extra {
        builder = builder.pod(pod.clone());
    }
    builder.start().expect("starting two nodes")
}

/// A TLS client config with a certificate of the mesh's CA that expects pod `b`'s identity,
/// and `b`'s HBONE address: enough to get past the handshake.
fn prober_of_b(mesh: &TwoNodes) -> (Arc<ClientConfig>, SocketAddr) {
    let (credential, bundle): (Credential, TrustBundle) = hbone::issue(&mesh.cp, "prober");
    let b = mesh.pod("b");
    let b_id = SpiffeId::parse(&b.spiffe_id()).unwrap();
    let tls = with_h2(client_config(Some(&credential), &bundle, Expect::Exactly(b_id)).unwrap());
    (tls, b.addr(HBONE_PORT))
}

/// Pod `b`'s HBONE port, from pod `h` outside the mesh with a certificate of the mesh's CA
/// (so it gets past the handshake): a connection that never starts TLS is closed after 3 s,
/// one that stops after the handshake and a real HTTP/2 client that never sends a CONNECT
/// after 10 s (the TLS bound held before; the others were open for good).
#[test]
fn hbone_closes_connections_that_never_send_a_request() {
    require_root();
    let mesh = two_nodes(&[PodDef::plain("h")]);
    let (tls, hbone) = prober_of_b(&mesh);
    let h = &mesh.pod("h").pod;
    let speeches = [
        ("no TLS handshake", Speak::Nothing),
        ("TLS, then silence", Speak::Tls(tls.clone())),
        ("HTTP/2, no request", Speak::Http2(tls)),
    ];
    // Dialled from pod `h`'s network namespace, over the bridge.
    let dialled: Vec<std::net::TcpStream> = speeches
        .iter()
        .map(|_| {
            let tcp = h
                .in_netns(|| std::net::TcpStream::connect_timeout(&hbone, Duration::from_secs(3)))
                .unwrap()
                .unwrap_or_else(|e| panic!("connect {hbone} from h: {e}"));
            tcp.set_nonblocking(true).unwrap();
            tcp
        })
        .collect();
    runtime().block_on(async {
        let (mut silent_from_the_start, mut probes) = (Vec::new(), Vec::new());
        for ((what, speak), tcp) in speeches.into_iter().zip(dialled) {
            let tcp = TcpStream::from_std(tcp).unwrap();
            let into = match speak {
                Speak::Nothing => &mut silent_from_the_start,
                _ => &mut probes,
            };
            into.push((
                format!("HBONE {hbone}: {what}"),
                tokio::spawn(silent(tcp, speak)),
            ));
        }
        // No ClientHello within 3 s: the connection gives its handshake slot back then.
        let first_byte = Duration::from_secs(3);
        expect_closed_within(
            silent_from_the_start,
            first_byte - Duration::from_secs(1)..=first_byte + Duration::from_secs(4),
        )
        .await;
        expect_closed_by_the_bound(probes).await;
    });
}

/// One source cannot hold the node's HBONE handshakes: pod `h` opens more silent
/// connections to pod `b`'s HBONE port than the node has handshake slots (1024), and a
/// client with a mesh certificate in pod `g` (another IP) still completes its handshake
/// meanwhile. Before, `h`'s connections took every slot and `g` was refused.
#[test]
fn hbone_handshake_slots_are_limited_per_source() {
    require_root();
    mesh_proto::limits::raise_open_file_limit();
    let mesh = two_nodes(&[PodDef::plain("h"), PodDef::plain("g")]);
    let (tls, hbone) = prober_of_b(&mesh);
    let flood: Vec<std::net::TcpStream> = mesh
        .pod("h")
        .pod
        .in_netns(|| {
            (0..1100)
                .map(|_| std::net::TcpStream::connect_timeout(&hbone, Duration::from_secs(3)))
                .collect::<std::io::Result<Vec<_>>>()
        })
        .unwrap()
        .expect("flooding from h");
    // Let the agent accept them all (and so take every slot it gives to `h`).
    std::thread::sleep(Duration::from_millis(500));
    let legit = mesh
        .pod("g")
        .pod
        .in_netns(|| std::net::TcpStream::connect_timeout(&hbone, Duration::from_secs(3)))
        .unwrap()
        .expect("connecting from g");
    legit.set_nonblocking(true).unwrap();
    runtime().block_on(async {
        let tcp = TcpStream::from_std(legit).unwrap();
        let handshake = TlsConnector::from(tls).connect(ServerName::from(hbone.ip()), tcp);
        tokio::time::timeout(Duration::from_secs(2), handshake)
            .await
            .expect("the handshake from g timed out")
            .expect("the handshake from g while h floods");
    });
    drop(flood);
}
