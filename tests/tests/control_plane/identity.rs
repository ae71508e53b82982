//! Node identity against the control plane: joining with a token, mutual TLS for the config
//! stream and certificate signing, meshctl verifying the control plane, root rotation, and an
//! operator-supplied root.
//!
//! Some checks call the gRPC API directly (as an agent or a rogue client would), with the
//! same client helpers meshctl uses.

use std::time::Duration;

use anyhow::Result;
use mesh_control::client::{
    connect_admin, control_plane_client_config, node_client_config, tls_channel, AdminClient,
};
use mesh_identity::tls::{pinned_client_config, Expect};
use mesh_identity::{new_csr, Credential, SpiffeId, TrustBundle};
use mesh_proto::v1::agent_message::Message;
use mesh_proto::v1::config_distribution_client::ConfigDistributionClient;
use mesh_proto::v1::node_identity_client::NodeIdentityClient;
use mesh_proto::v1::{self as pb, AgentMessage, Hello};
use mesh_tests::control::ControlPlane;
use mesh_tests::mesh::{service_yaml, MeshNode, NODE};
use mesh_tests::require_root;
use tonic::Code;

use crate::support::*;

const TD: &str = "cluster.local";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn admin(cp: &ControlPlane) -> AdminClient {
    let token = std::fs::read_to_string(cp.token_file()).unwrap();
    let ca = std::fs::read_to_string(cp.ca_file()).unwrap();
    connect_admin(&cp.url(), &token, &ca).await.unwrap()
}

/// Joins `node` through the Join RPC as an agent does (TLS pinned to the token's CA hash):
/// its credential and the trust bundle.
async fn join_directly(cp: &ControlPlane, node: &str) -> Result<(Credential, String)> {
    let token = cp.join_token(node)?;
    let pin_hex = token.rsplit('.').next().unwrap();
    let mut pin = [0u8; 32];
    for (i, b) in pin.iter_mut().enumerate() {
        *b = u8::from_str_radix(&pin_hex[2 * i..2 * i + 2], 16)?;
    }
    let channel = tls_channel(&cp.url(), pinned_client_config(pin, Expect::ControlPlane)?).await?;
    let id = SpiffeId::node(TD, node)?;
    let (key_pem, csr_pem) = new_csr(&id)?;
    let signed = NodeIdentityClient::new(channel)
        .join(pb::JoinRequest {
            token,
            node: node.to_owned(),
            csr_pem,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    Ok((
        Credential::from_pem(&signed.chain_pem, &key_pem)?,
        signed.trust_bundle_pem,
    ))
}

/// A NodeIdentity client presenting `credential` (or nothing).
async fn identity_client(
    cp: &ControlPlane,
    credential: Option<&Credential>,
) -> NodeIdentityClient<tonic::transport::Channel> {
    let ca = std::fs::read_to_string(cp.ca_file()).unwrap();
    let config = match credential {
        Some(c) => node_client_config(c, &ca).unwrap(),
        None => control_plane_client_config(&ca).unwrap(),
    };
    NodeIdentityClient::new(tls_channel(&cp.url(), config).await.unwrap())
}

/// Opens the config stream with `credential` (or none) saying Hello as `node`: the first
/// push, or the refusal.
async fn open_stream(
    cp: &ControlPlane,
    credential: Option<&Credential>,
    node: &str,
) -> Result<pb::ConfigPush, tonic::Status> {
    let ca = std::fs::read_to_string(cp.ca_file()).unwrap();
    let config = match credential {
        Some(c) => node_client_config(c, &ca).unwrap(),
        None => control_plane_client_config(&ca).unwrap(),
    };
    let channel = tls_channel(&cp.url(), config).await.unwrap();
    let hello = AgentMessage {
        message: Some(Message::Hello(Hello {
            node: node.to_owned(),
            version: 0,
            agent_version: "test".into(),
        })),
    };
    let mut pushes = ConfigDistributionClient::new(channel)
        .stream_config(tokio_stream::iter(vec![hello]))
        .await?
        .into_inner();
    pushes
        .message()
        .await?
        .ok_or_else(|| tonic::Status::unknown("the stream ended without a push"))
}

pub(crate) fn certificates(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

pub(crate) fn identity_file(node: &MeshNode, name: &str) -> String {
    std::fs::read_to_string(node.state_dir().join("identity").join(name)).unwrap_or_default()
}

/// The error of an agent start that must fail.
fn agent_start_fails(cp: &ControlPlane, node: &str, args: &[&str]) -> String {
    match MeshNode::start_with_control_plane_args(node, &[cp.url()], args) {
        Ok(_) => panic!("the agent {node} with {args:?} started"),
        Err(e) => format!("{e:#}"),
    }
}

/// An agent joins with a token `meshctl token create` printed: it gets its node certificate
/// (kept 0600 in a 0700 directory), follows the control plane over mTLS and ACKs; restarted
/// without a token it reuses the stored credential.
#[test]
fn agent_joins_with_a_token_and_follows() {
    require_root();
    let cp = ControlPlane::start_embedded().unwrap();
    let token = cp.join_token(NODE).unwrap();
    assert_eq!(token.lines().count(), 1, "the token alone: {token:?}");
    assert_eq!(token.split('.').count(), 3, "{token}");
    let mut node =
        MeshNode::start_with_control_plane_args(NODE, &[cp.url()], &["--join-token", &token])
            .unwrap();
    cp.apply(&service_yaml("web", &[vip()], 80, APP_PORT, "web"))
        .unwrap();
    let version = wait_synced(&cp, &node);
    assert!(version > 0);

    let dir = node.state_dir().join("identity");
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    assert_eq!(mode(&dir.join("node.key")), 0o600);
    let credential = Credential::from_pem(
        &identity_file(&node, "node.pem"),
        &identity_file(&node, "node.key"),
    )
    .unwrap();
    assert_eq!(
        credential.id().as_str(),
        format!("spiffe://{TD}/mesh/node/{NODE}")
    );
    assert_eq!(
        identity_file(&node, "ca.pem"),
        cp.meshctl_ok(&["ca-cert"]).unwrap()
    );

    // Restarted without a token: the stored credential.
    node.stop_agent().unwrap();
    node.set_extra_args(&[]);
    node.start_agent().unwrap();
    cp.apply(&service_yaml("web", &[vip()], 81, APP_PORT, "web"))
        .unwrap();
    let again = wait_synced(&cp, &node);
    assert!(again > version);
    let log = node.agent().unwrap().log();
    assert!(log.contains("using the stored node credential"), "{log}");
}

/// A missing, malformed, expired, used, other node's or other mesh's token: the agent does
/// not start, and says why.
#[test]
fn bad_join_tokens_are_refused_with_the_reason() {
    require_root();
    let cp = ControlPlane::start_embedded().unwrap();

    let e = agent_start_fails(&cp, NODE, &[]);
    assert!(e.contains("--join-token"), "{e}");
    assert!(e.contains("meshctl token create --node node-1"), "{e}");

    let e = agent_start_fails(&cp, NODE, &["--join-token", "garbage"]);
    assert!(e.contains("--join-token is malformed"), "{e}");

    let other_node = cp.join_token("node-2").unwrap();
    let e = agent_start_fails(&cp, NODE, &["--join-token", &other_node]);
    assert!(
        e.contains("this join token is for node \"node-2\", not \"node-1\""),
        "{e}"
    );

    let short = cp
        .meshctl_ok(&["token", "create", "--node", NODE, "--ttl", "1s"])
        .unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    let e = agent_start_fails(&cp, NODE, &["--join-token", short.trim()]);
    assert!(e.contains("join token expired"), "{e}");

    // Single use.
    let token = cp.join_token(NODE).unwrap();
    let node =
        MeshNode::start_with_control_plane_args(NODE, &[cp.url()], &["--join-token", &token])
            .unwrap();
    drop(node);
    let e = agent_start_fails(&cp, NODE, &["--join-token", &token]);
    assert!(e.contains("join token not recognised"), "{e}");

    // A token of another mesh names another CA: the agent refuses this control plane.
    let other = ControlPlane::start_embedded().unwrap();
    let foreign = other.join_token(NODE).unwrap();
    let e = agent_start_fails(&cp, NODE, &["--join-token", &foreign]);
    assert!(
        e.contains("does not match the CA the join token names"),
        "{e}"
    );
}

/// The config stream and SignCertificate need a node certificate; the node is the one the
/// certificate names, whatever Hello says.
#[test]
fn config_stream_and_signing_need_a_node_certificate() {
    require_root();
    let cp = ControlPlane::start_embedded().unwrap();
    runtime().block_on(async {
        let e = open_stream(&cp, None, NODE).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(
            e.message().contains("client certificate"),
            "{}",
            e.message()
        );

        let mut anonymous = identity_client(&cp, None).await;
        let (_, csr_pem) = new_csr(&SpiffeId::node(TD, NODE).unwrap()).unwrap();
        let e = anonymous
            .sign_certificate(pb::SignCertificateRequest { csr_pem })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

        // A workload certificate (issued by the admin) is no node.
        let workload = SpiffeId::workload(TD, "default", "web").unwrap();
        let (key_pem, csr_pem) = new_csr(&workload).unwrap();
        let signed = admin(&cp)
            .await
            .issue_certificate(pb::IssueCertificateRequest {
                csr_pem,
                ttl_seconds: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let as_workload = Credential::from_pem(&signed.chain_pem, &key_pem).unwrap();
        let e = open_stream(&cp, Some(&as_workload), NODE)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(
            e.message().contains("not a node identity"),
            "{}",
            e.message()
        );

        let (node1, _) = join_directly(&cp, NODE).await.unwrap();
        let e = open_stream(&cp, Some(&node1), "node-2").await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("Hello.node"), "{}", e.message());

        let push = open_stream(&cp, Some(&node1), NODE).await.unwrap();
        assert!(push.full, "{push:?}");
        assert_eq!(
            push.trust_bundle_pem,
            std::fs::read_to_string(cp.ca_file()).unwrap(),
            "the first push carries the trust bundle"
        );
    });
}

/// Signs a fresh CSR for `id` over `client`'s connection.
async fn sign(
    client: &mut NodeIdentityClient<tonic::transport::Channel>,
    id: &str,
) -> Result<Credential, tonic::Status> {
    let id = SpiffeId::parse(id).unwrap();
    let (key_pem, csr_pem) = new_csr(&id).unwrap();
    let signed = client
        .sign_certificate(pb::SignCertificateRequest { csr_pem })
        .await?
        .into_inner();
    Ok(Credential::from_pem(&signed.chain_pem, &key_pem).unwrap())
}

/// A node gets certificates for its own identity and for workloads declared on it, never
/// for another node's; lifetimes follow MeshConfig.
#[test]
fn csr_for_another_nodes_workload_is_refused() {
    require_root();
    let cp = ControlPlane::start_embedded().unwrap();
    let workload = |name: &str, node: &str, sa: &str, ip: &str| {
        format!(
            "---\napiVersion: mesh/v1\nkind: Workload\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  uid: {name}-uid\n  ips: [\"{ip}\"]\n  node: {node}\n  serviceAccount: {sa}\n"
        )
    };
    cp.apply(&format!(
        "{}{}",
        workload("reviews-1", NODE, "reviews", "10.241.0.2"),
        workload("ratings-1", "node-2", "ratings", "10.241.0.3"),
    ))
    .unwrap();
    runtime().block_on(async {
        let (node1, bundle) = join_directly(&cp, NODE).await.unwrap();
        assert_eq!(bundle, std::fs::read_to_string(cp.ca_file()).unwrap());
        let mut client = identity_client(&cp, Some(&node1)).await;
        let denied = |e: tonic::Status, id: &str| {
            assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
            assert!(e.message().contains(id), "{}", e.message());
            assert!(e.message().contains("node-1"), "{}", e.message());
        };

        let other = format!("spiffe://{TD}/ns/default/sa/ratings");
        denied(sign(&mut client, &other).await.unwrap_err(), &other);
        let other_node = format!("spiffe://{TD}/mesh/node/node-2");
        denied(
            sign(&mut client, &other_node).await.unwrap_err(),
            &other_node,
        );
        let other_domain = "spiffe://example.org/ns/default/sa/reviews".to_owned();
        let e = sign(&mut client, &other_domain).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

        let own = format!("spiffe://{TD}/ns/default/sa/reviews");
        let cert = sign(&mut client, &own).await.unwrap();
        assert_eq!(cert.id().as_str(), own);
        assert_eq!(cert.chain().len(), 1, "leaf only: the root signs");
        let life = cert.not_after().duration_since(cert.not_before()).unwrap();
        assert!(
            life > Duration::from_secs(86_000) && life <= Duration::from_secs(86_400 + 60),
            "{life:?}"
        );
        let renewed = sign(&mut client, &format!("spiffe://{TD}/mesh/node/node-1"))
            .await
            .unwrap();
        assert_eq!(renewed.id(), node1.id());

        let e = client
            .sign_certificate(pb::SignCertificateRequest {
                csr_pem:
                    "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
                        .into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    });

    // A short lifetime from MeshConfig.
    cp.apply("apiVersion: mesh/v1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec:\n  workloadCertTtlSeconds: 10\n")
        .unwrap();
    let bad = apply_fails(
        &cp,
        "apiVersion: mesh/v1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec:\n  workloadCertTtlSeconds: 5\n",
    );
    assert!(bad.contains("spec.workloadCertTtlSeconds"), "{bad}");
    runtime().block_on(async {
        let (node1, _) = join_directly(&cp, NODE).await.unwrap();
        let mut client = identity_client(&cp, Some(&node1)).await;
        let id = SpiffeId::workload(TD, "default", "reviews").unwrap();
        let (key_pem, csr_pem) = new_csr(&id).unwrap();
        let signed = client
            .sign_certificate(pb::SignCertificateRequest { csr_pem })
            .await
            .unwrap()
            .into_inner();
        let cert = Credential::from_pem(&signed.chain_pem, &key_pem).unwrap();
        let life = cert.not_after().duration_since(cert.not_before()).unwrap();
        assert!(life <= Duration::from_secs(70), "{life:?}");
    });

    // The admin's `meshctl cert issue`.
    let id = SpiffeId::workload(TD, "tools", "backup").unwrap();
    let (_, csr_pem) = new_csr(&id).unwrap();
    let csr = write_temp(&csr_pem);
    let chain = cp
        .meshctl_ok(&[
            "cert",
            "issue",
            "--csr",
            &csr.path().display().to_string(),
            "--ttl",
            "1h",
        ])
        .unwrap();
    assert_eq!(certificates(&chain), 1, "{chain}");
    assert_eq!(
        mesh_identity::spiffe_id_of(TrustBundle::from_pem(&chain).unwrap().roots()[0].as_ref())
            .unwrap(),
        id
    );
}

/// meshctl verifies the control plane against the trust bundle: a missing or another mesh's
/// CA file fails, saying so; the control plane's ca.pem works (also found next to the token
/// file, and with the URL typed without a scheme).
#[test]
fn meshctl_verifies_the_control_plane_with_the_ca_file() {
    require_root();
    let cp = ControlPlane::start_embedded().unwrap();
    let other = ControlPlane::start_embedded().unwrap();
    assert_eq!(mode(&cp.ca_file()), 0o644);
    assert_eq!(
        std::fs::read_to_string(cp.ca_file()).unwrap(),
        cp.meshctl_ok(&["ca-cert"]).unwrap()
    );
    let url = cp.url();
    let token_file = cp.token_file().display().to_string();
    let run = |extra: &[&str]| {
        let mut args = vec!["--token-file", token_file.as_str()];
        args.extend_from_slice(extra);
        meshctl_raw(&args, None)
    };
    let missing = "/nonexistent/ca.pem";
    let out = run(&["--server", &url, "--ca-file", missing, "status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(missing) && stderr.contains("--ca-file"),
        "{stderr}"
    );

    let wrong = other.ca_file().display().to_string();
    let out = run(&["--server", &url, "--ca-file", &wrong, "status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");

    let garbage = write_temp("not a certificate\n");
    let garbage = garbage.path().display().to_string();
    let out = run(&["--server", &url, "--ca-file", &garbage, "status"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CA file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ca = cp.ca_file().display().to_string();
    stdout_ok(
        "status",
        &run(&["--server", &url, "--ca-file", &ca, "status"]),
    )
    .unwrap();
    // ca.pem next to admin.token is the default.
    stdout_ok("status", &run(&["--server", &url, "status"])).unwrap();
    let bare = url.trim_start_matches("https://");
    stdout_ok("status", &run(&["--server", bare, "status"])).unwrap();
}
