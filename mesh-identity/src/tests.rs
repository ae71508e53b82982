//! Real handshakes between the configs of [`crate::tls`], over an in-memory transport.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair,
};
use rustls::{ClientConnection, ServerConnection};

use crate::tls::{self, ClientAuth, Expect};
use crate::{new_csr, sha256, Credential, SpiffeId, TrustBundle};

struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
}

impl TestCa {
    fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).unwrap();
        TestCa {
            issuer: Issuer::new(params, key),
            root_pem: root.pem(),
        }
    }

    fn bundle(&self) -> TrustBundle {
        TrustBundle::from_pem(&self.root_pem).unwrap()
    }

    fn issue(&self, id: &SpiffeId) -> Credential {
        let (key_pem, csr_pem) = new_csr(id).unwrap();
        let mut csr = CertificateSigningRequestParams::from_pem(&csr_pem).unwrap();
        csr.params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = csr.signed_by(&self.issuer).unwrap();
        Credential::from_pem(&cert.pem(), &key_pem).unwrap()
    }
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// Runs a handshake; `Ok((server's view of the client, client's view of the server))`.
fn handshake(
    client: rustls::ClientConfig,
    server: rustls::ServerConfig,
) -> Result<(Option<SpiffeId>, Option<SpiffeId>), rustls::Error> {
    let name = rustls::pki_types::ServerName::try_from("mesh").unwrap();
    let mut c = ClientConnection::new(client.into(), name)?;
    let mut s = ServerConnection::new(server.into())?;
    for _ in 0..10 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        s.read_tls(&mut buf.as_slice()).unwrap();
        s.process_new_packets()?;
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        c.read_tls(&mut buf.as_slice()).unwrap();
        c.process_new_packets()?;
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok((tls::peer_id(&s), tls::peer_id(&c)));
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn mutual_tls_carries_both_spiffe_ids() {
    let ca = TestCa::new();
    let server_id = id("spiffe://td/ns/default/sa/server");
    let client_id = id("spiffe://td/ns/default/sa/client");
    let server = ca.issue(&server_id);
    let client = ca.issue(&client_id);
    let (seen_client, seen_server) = handshake(
        tls::client_config(
            Some(&client),
            &ca.bundle(),
            Expect::Exactly(server_id.clone()),
        )
        .unwrap(),
        tls::server_config(&server, &ca.bundle(), ClientAuth::Required).unwrap(),
    )
    .unwrap();
    assert_eq!(seen_client, Some(client_id));
    assert_eq!(seen_server, Some(server_id));
}

#[test]
fn wrong_server_identity_is_refused() {
    let ca = TestCa::new();
    let server = ca.issue(&id("spiffe://td/ns/default/sa/impostor"));
    let client = ca.issue(&id("spiffe://td/ns/default/sa/client"));
    let expect = Expect::Exactly(id("spiffe://td/ns/default/sa/server"));
    let result = handshake(
        tls::client_config(Some(&client), &ca.bundle(), expect).unwrap(),
        tls::server_config(&server, &ca.bundle(), ClientAuth::Required).unwrap(),
    );
    assert!(result.is_err());
}

#[test]
fn certificates_of_another_ca_are_refused_both_ways() {
    let ours = TestCa::new();
    let theirs = TestCa::new();
    let server_id = id("spiffe://td/ns/default/sa/server");
    let our_server = ours.issue(&server_id);
    let their_client = theirs.issue(&id("spiffe://td/ns/default/sa/client"));
    let result = handshake(
        tls::client_config(Some(&their_client), &theirs.bundle(), Expect::Any).unwrap(),
        tls::server_config(&our_server, &ours.bundle(), ClientAuth::Required).unwrap(),
    );
    assert!(result.is_err(), "client must not trust another CA's server");
    let result = handshake(
        tls::client_config(Some(&their_client), &ours.bundle(), Expect::Any).unwrap(),
        tls::server_config(&our_server, &ours.bundle(), ClientAuth::Required).unwrap(),
    );
    assert!(
        result.is_err(),
        "server must not accept another CA's client"
    );
}

#[test]
fn required_client_auth_refuses_anonymous_clients_optional_admits_them() {
    let ca = TestCa::new();
    let server = ca.issue(&SpiffeId::control_plane("td").unwrap());
    let anonymous = || tls::client_config(None, &ca.bundle(), Expect::ControlPlane).unwrap();
    let required = tls::server_config(&server, &ca.bundle(), ClientAuth::Required).unwrap();
    assert!(handshake(anonymous(), required).is_err());
    let optional = tls::server_config(&server, &ca.bundle(), ClientAuth::Optional).unwrap();
    let (seen_client, _) = handshake(anonymous(), optional).unwrap();
    assert_eq!(seen_client, None);
}

#[test]
fn pinned_root_must_be_in_the_servers_chain() {
    let ca = TestCa::new();
    let server = ca.issue(&SpiffeId::control_plane("td").unwrap());
    let root_der = ca.bundle().roots()[0].clone();
    // A server that sends its root along: the pin finds it.
    let with_root = Credential::from_pem(
        &format!("{}{}", server.chain_pem(), ca.root_pem),
        &server.key_pem(),
    )
    .unwrap();
    let pin = sha256(&root_der);
    let config =
        |c: &Credential| tls::server_config(c, &ca.bundle(), ClientAuth::Optional).unwrap();
    assert!(handshake(
        tls::pinned_client_config(pin, Expect::ControlPlane).unwrap(),
        config(&with_root)
    )
    .is_ok());
    assert!(handshake(
        tls::pinned_client_config([0; 32], Expect::ControlPlane).unwrap(),
        config(&with_root)
    )
    .is_err());
}

#[test]
fn credential_round_trips_through_pem_and_knows_its_renewal_time() {
    let ca = TestCa::new();
    let c = ca.issue(&id("spiffe://td/ns/a/sa/b"));
    let again = Credential::from_pem(&c.chain_pem(), &c.key_pem()).unwrap();
    assert_eq!(again.id(), c.id());
    assert!(c.renew_at() > c.not_before() && c.renew_at() < c.not_after());
    assert!(Credential::from_pem("garbage", &c.key_pem()).is_err());
    assert!(TrustBundle::from_pem("").is_err());
}

#[test]
fn half_life_counts_from_receipt_when_not_before_is_backdated() {
    let ca = TestCa::new();
    let id = id("spiffe://td/ns/a/sa/b");
    let (key_pem, csr_pem) = new_csr(&id).unwrap();
    let mut csr = CertificateSigningRequestParams::from_pem(&csr_pem).unwrap();
    let now = std::time::SystemTime::now();
    // Backdated a minute, valid for 10 s from now: renewal is ~5 s from now, not in the past.
    csr.params.not_before = (now - std::time::Duration::from_secs(60)).into();
    csr.params.not_after = (now + std::time::Duration::from_secs(10)).into();
    let cert = csr.signed_by(&ca.issuer).unwrap();
    let credential = Credential::from_pem(&cert.pem(), &key_pem).unwrap();
    let renew_in = credential.renew_at().duration_since(now).unwrap();
    assert!(
        renew_in.as_secs_f64() > 3.0 && renew_in.as_secs_f64() < 6.0,
        "{renew_in:?}"
    );
}
