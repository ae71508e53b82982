//! The inbound policy decision, made wherever a connection reaches a pod of this node: the
//! plaintext inbound listener, an HBONE CONNECT, and same-node delivery. Open connections are
//! decided again when the config changes (see `tracker`).
//!
//! Order: PeerAuthentication first (STRICT refuses plaintext), then AuthorizationPolicy
//! (any DENY match denies; with ALLOW policies one must match; else the mesh default).
//!
//! A connection that carries HTTP requests to a port where the destination's policies or
//! JWT rules need the request ([`Snapshot::needs_request_security`]) is only checked for
//! PeerAuthentication here: its AuthorizationPolicy decision is made per request
//! (`proxy::request_security`), since a connection-level answer would be wrong both ways.

use std::net::IpAddr;

use mesh_api::{MtlsMode, ObjectKey, Peer, Snapshot};
use serde::{Deserialize, Serialize};

use crate::metrics::{DirectionCounters, Failure};

/// How a connection reached the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Mutual TLS (HBONE) from another node: the peer's identity is verified.
    Hbone,
    /// Plaintext TCP: no identity.
    Plaintext,
    /// From a pod of this node, handed over inside this agent: the agent itself knows the
    /// source pod's identity, so it counts as authenticated.
    Local,
}

/// Who is connecting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Verified SPIFFE ID; `None` for plaintext.
    pub principal: Option<String>,
    pub ip: IpAddr,
}

/// What a connection into a pod carries, as far as the proxy knows when it opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Carries {
    /// Opaque bytes (or HTTP the proxy will not look into): judged per connection.
    Bytes,
    /// Bytes an `auto` port's client sent that are not HTTP: judged per connection, and
    /// never taken for HTTP relayed unjudged (see `tracker`).
    Opaque,
    /// HTTP requests the proxy parses: judged per request where policy needs it.
    Http,
}

/// Whether `peer` may reach `workload` on `port` over `transport`, and which AUDIT policy
/// matched. A pod whose workload vanished from the config is judged by the mesh defaults.
pub fn admit(
    snapshot: &Snapshot,
    workload: &ObjectKey,
    peer: &PeerInfo,
    port: u16,
    transport: Transport,
    carries: Carries,
) -> Verdict {
    let verdict = |outcome, audited| Verdict { outcome, audited };
    let Some(workload) = snapshot.workload(&workload.namespace, &workload.name) else {
        let mesh = snapshot.mesh_config();
        if transport == Transport::Plaintext && mesh.default_mtls_mode == MtlsMode::Strict {
            return verdict(Err(Failure::PlaintextRefused), None);
        }
        let outcome = match mesh.default_policy {
            mesh_api::DefaultPolicy::Allow => Ok(()),
            mesh_api::DefaultPolicy::Deny => Err(Failure::AuthzDenied),
        };
        return verdict(outcome, None);
    };
    if transport == Transport::Plaintext
        && snapshot.mtls_mode_for(workload, port) == MtlsMode::Strict
    {
        return verdict(Err(Failure::PlaintextRefused), None);
    }
    if carries == Carries::Http && snapshot.needs_request_security(workload, port) {
        return verdict(Ok(()), None);
    }
    let decision = snapshot.authorize(
        workload,
        &Peer {
            principal: peer.principal.as_deref(),
            ip: peer.ip,
        },
        port,
    );
    let audited = decision.audit.map(|p| p.metadata.key().to_string());
    if !decision.allowed {
        tracing::debug!(workload = %workload.metadata.key(), principal = ?peer.principal, ip = %peer.ip, port, reason = ?decision.reason, "connection denied by policy");
        return verdict(Err(Failure::AuthzDenied), audited);
    }
    verdict(Ok(()), audited)
}

/// The decision, and the AUDIT policy that matched, if any (audits are recorded whether
/// the connection is allowed or not).
pub struct Verdict {
    pub outcome: Result<(), Failure>,
    pub audited: Option<String>,
}

/// [`admit`] with the outcome counted on `counters` and audits logged and counted.
pub fn admit_counted(
    snapshot: &Snapshot,
    workload: &ObjectKey,
    peer: &PeerInfo,
    port: u16,
    transport: Transport,
    carries: Carries,
    counters: &DirectionCounters,
) -> Result<(), Failure> {
    let verdict = admit(snapshot, workload, peer, port, transport, carries);
    if let Some(policy) = &verdict.audited {
        counters.audited.inc();
        tracing::info!(audit_policy = %policy, %workload, principal = ?peer.principal, ip = %peer.ip, port, allowed = verdict.outcome.is_ok(), "audited connection");
    }
    if let Err(reason) = verdict.outcome {
        counters.fail(reason);
    }
    verdict.outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKLOADS: &str = r#"
apiVersion: mesh/v1
kind: Workload
metadata: {name: db, namespace: prod}
spec: {uid: db, ips: ["10.0.0.5"], node: n1, serviceAccount: db, labels: {app: db}}
---
apiVersion: mesh/v1
kind: Workload
metadata: {name: web, namespace: prod}
spec: {uid: web, ips: ["10.0.0.6"], node: n1, serviceAccount: web, labels: {app: web}}
"#;

    fn snapshot(extra: &str) -> Snapshot {
        let yaml = format!("{WORKLOADS}---\n{extra}");
        Snapshot::from_resources(mesh_api::load_str("t.yaml", &yaml).unwrap()).unwrap()
    }

    fn peer(principal: Option<&str>) -> PeerInfo {
        PeerInfo {
            principal: principal.map(str::to_owned),
            ip: "10.0.0.9".parse().unwrap(),
        }
    }

    fn decide(
        snapshot: &Snapshot,
        workload: &str,
        peer: &PeerInfo,
        transport: Transport,
    ) -> Result<(), Failure> {
        admit(
            snapshot,
            &ObjectKey::new("prod", workload),
            peer,
            5432,
            transport,
            Carries::Bytes,
        )
        .outcome
    }

    const WEB: Option<&str> = Some("spiffe://cluster.local/ns/prod/sa/web");

    #[test]
    fn strict_refuses_plaintext_but_not_mtls_or_same_node() {
        let s = snapshot(
            "apiVersion: mesh/v1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: prod}\nspec: {mode: STRICT}\n",
        );
        assert_eq!(
            decide(&s, "db", &peer(None), Transport::Plaintext),
            Err(Failure::PlaintextRefused)
        );
        assert_eq!(decide(&s, "db", &peer(WEB), Transport::Hbone), Ok(()));
        assert_eq!(decide(&s, "db", &peer(WEB), Transport::Local), Ok(()));
    }

    #[test]
    fn allow_policy_admits_only_its_principals() {
        let s = snapshot(
            r#"apiVersion: mesh/v1
kind: AuthorizationPolicy
metadata: {name: db-from-web, namespace: prod}
spec:
  selector: {app: db}
  action: ALLOW
  rules: [{from: {principals: ["spiffe://cluster.local/ns/prod/sa/web"]}}]
"#,
        );
        assert_eq!(decide(&s, "db", &peer(WEB), Transport::Hbone), Ok(()));
        let other = peer(Some("spiffe://cluster.local/ns/prod/sa/other"));
        assert_eq!(
            decide(&s, "db", &other, Transport::Hbone),
            Err(Failure::AuthzDenied)
        );
        assert_eq!(
            decide(&s, "db", &peer(None), Transport::Plaintext),
            Err(Failure::AuthzDenied)
        );
        // No ALLOW policy selects web: the default (ALLOW) applies.
        assert_eq!(decide(&s, "web", &other, Transport::Hbone), Ok(()));
    }

    #[test]
    fn http_connections_to_ports_judged_per_request_are_left_to_the_requests() {
        let s = snapshot(
            r#"apiVersion: mesh/v1
kind: AuthorizationPolicy
metadata: {name: db-get-only, namespace: prod}
spec:
  selector: {app: db}
  action: ALLOW
  rules: [{to: {methods: [GET]}}]
---
apiVersion: mesh/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: prod}
spec: {mode: STRICT}
"#,
        );
        let admit_as = |transport, carries| {
            admit(
                &s,
                &ObjectKey::new("prod", "db"),
                &peer(WEB),
                5432,
                transport,
                carries,
            )
            .outcome
        };
        // Opaque bytes can't show a method: the HTTP-only ALLOW rule never matches.
        assert_eq!(
            admit_as(Transport::Hbone, Carries::Bytes),
            Err(Failure::AuthzDenied)
        );
        // HTTP requests are judged one by one later; STRICT still applies now.
        assert_eq!(admit_as(Transport::Hbone, Carries::Http), Ok(()));
        assert_eq!(
            admit_as(Transport::Plaintext, Carries::Http),
            Err(Failure::PlaintextRefused)
        );
    }

    #[test]
    fn default_deny_and_vanished_workloads() {
        let s = snapshot(
            "apiVersion: mesh/v1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {defaultPolicy: DENY}\n",
        );
        assert_eq!(
            decide(&s, "db", &peer(WEB), Transport::Hbone),
            Err(Failure::AuthzDenied)
        );
        assert_eq!(
            decide(&s, "gone", &peer(WEB), Transport::Hbone),
            Err(Failure::AuthzDenied)
        );
        let open = snapshot("");
        assert_eq!(
            decide(&open, "gone", &peer(None), Transport::Plaintext),
            Ok(())
        );
    }
}
