//! `kind: MeshConfig`: mesh-wide settings. A cluster-scoped singleton named `mesh`: its
//! metadata has no namespace (the key's namespace is the empty string). Every setting has a
//! default, so a mesh without one (or with `spec: {}`) behaves the same as with the defaults
//! written out.

use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;
use crate::observability::{check_observability, Observability};
use crate::peer_auth::MtlsMode;
use crate::resource::Kind;
use crate::route::{check_timeout, MAX_RETRY_ATTEMPTS, MAX_TIMEOUT_MS};
use crate::validate::{check_cluster_meta, check_positive, is_dns1123_label, Checker};
use crate::workload::Workload;

/// The only accepted `metadata.name` of a MeshConfig.
pub const MESH_CONFIG_NAME: &str = "mesh";
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
pub const DEFAULT_ROOT_NAMESPACE: &str = "mesh-system";

/// Lifetime of workload and node certificates by default (24 h); they renew at half life.
pub const DEFAULT_CERT_TTL_SECONDS: u64 = 24 * 3600;
/// Shortest certificate lifetime accepted (short enough for tests to watch rotation).
pub const MIN_CERT_TTL_SECONDS: u64 = 10;
/// Longest certificate lifetime accepted (90 days).
pub const MAX_CERT_TTL_SECONDS: u64 = 90 * 24 * 3600;

/// Longest trust domain SPIFFE allows.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshConfig {
    /// Name `mesh`, no namespace; see [`ObjectMeta::cluster_scoped`].
    #[serde(with = "crate::meta::cluster_scoped")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: MeshConfigSpec,
}

/// Mesh-wide settings. Serialised in full (defaults included), so a dump shows what is in
/// effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MeshConfigSpec {
    /// The `<trust-domain>` of every SPIFFE ID the CA issues.
    pub trust_domain: String,
    /// Policies (AuthorizationPolicy, PeerAuthentication) in this namespace apply mesh-wide.
    pub root_namespace: String,
    /// mTLS mode where no PeerAuthentication applies.
    pub default_mtls_mode: MtlsMode,
    /// What happens to a connection to a workload that no ALLOW policy applies to (after
    /// DENY policies): `DENY` makes the mesh default-deny.
    pub default_policy: DefaultPolicy,
    pub connect_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub health_check: HealthCheckSettings,
    /// Lifetime of the workload certificates the CA signs, in seconds; agents renew them at
    /// half life. Between 10 s and 90 days.
    pub workload_cert_ttl_seconds: u64,
    /// Lifetime of node certificates (an agent's own identity toward the control plane), in
    /// seconds; renewed at half life. Between 10 s and 90 days.
    pub node_cert_ttl_seconds: u64,
    /// Bound on a whole HTTP request (all tries) where no Route sets `timeoutMs`: 1 ms to
    /// 1 day. `null` (the default): no bound.
    pub request_timeout_ms: Option<u64>,
    /// Retries of a failed HTTP request where no Route sets `retries` (on the default
    /// `retryOn` failures), 0..=10. Default 0.
    pub default_retry_attempts: u32,
    pub observability: Observability,
}

/// `ALLOW` or `DENY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DefaultPolicy {
    #[default]
    Allow,
    Deny,
}

/// How agents probe their local endpoints (what is probed is per Service:
/// `spec.healthCheck`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HealthCheckSettings {
    pub interval_ms: u64,
    /// Per probe; at most `intervalMs`.
    pub timeout_ms: u64,
    /// Consecutive failures that mark a healthy endpoint unhealthy.
    pub unhealthy_threshold: u32,
    /// Consecutive successes that mark an unhealthy endpoint healthy.
    pub healthy_threshold: u32,
}

impl Default for MeshConfigSpec {
    fn default() -> Self {
        MeshConfigSpec {
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_owned(),
            default_mtls_mode: MtlsMode::Permissive,
            default_policy: DefaultPolicy::Allow,
            connect_timeout_ms: 5_000,
            idle_timeout_ms: 3_600_000,
            health_check: HealthCheckSettings::default(),
            workload_cert_ttl_seconds: DEFAULT_CERT_TTL_SECONDS,
            node_cert_ttl_seconds: DEFAULT_CERT_TTL_SECONDS,
            request_timeout_ms: None,
            default_retry_attempts: 0,
            observability: Observability::default(),
        }
    }
}

impl Default for HealthCheckSettings {
    fn default() -> Self {
        HealthCheckSettings {
            interval_ms: 2_000,
            timeout_ms: 1_000,
            unhealthy_threshold: 2,
            healthy_threshold: 1,
        }
    }
}

impl Default for MeshConfig {
    /// `mesh` with every default.
    fn default() -> Self {
        MeshConfig {
            metadata: ObjectMeta::cluster_scoped(MESH_CONFIG_NAME),
            spec: MeshConfigSpec::default(),
        }
    }
}

impl MeshConfigSpec {
    /// `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>`.
    pub fn spiffe_id(&self, namespace: &str, service_account: &str) -> String {
        format!(
            "spiffe://{}/ns/{namespace}/sa/{service_account}",
            self.trust_domain
        )
    }

    /// The SPIFFE ID the CA issues for `workload`.
    pub fn identity_of(&self, workload: &Workload) -> String {
        self.spiffe_id(&workload.metadata.namespace, &workload.spec.service_account)
    }
}

/// SPIFFE trust domain: lowercase letters, digits, '.', '-' and '_'.
fn is_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_TRUST_DOMAIN_LEN
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

impl Kind for MeshConfig {
    const KIND: &'static str = "MeshConfig";
    const NAMESPACED: bool = false;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn check(&self, c: &mut Checker<'_>) {
        check_cluster_meta(c, &self.metadata);
        if self.metadata.name != MESH_CONFIG_NAME {
            c.fail(
                "metadata.name",
                format!(
                    "must be {MESH_CONFIG_NAME:?} (MeshConfig is a singleton), got {:?}",
                    self.metadata.name
                ),
            );
        }
        let spec = &self.spec;
        if !is_trust_domain(&spec.trust_domain) {
            c.fail(
                "spec.trustDomain",
                format!(
                    "{:?} is not a trust domain (lowercase letters, digits, '.', '-' and '_', at most {MAX_TRUST_DOMAIN_LEN})",
                    spec.trust_domain
                ),
            );
        }
        if !is_dns1123_label(&spec.root_namespace) {
            c.fail(
                "spec.rootNamespace",
                format!(
                    "{:?} is not a namespace name (a DNS-1123 label)",
                    spec.root_namespace
                ),
            );
        }
        check_positive(c, "spec.connectTimeoutMs", spec.connect_timeout_ms);
        check_positive(c, "spec.idleTimeoutMs", spec.idle_timeout_ms);
        let hc = &spec.health_check;
        check_positive(c, "spec.healthCheck.intervalMs", hc.interval_ms);
        check_positive(c, "spec.healthCheck.timeoutMs", hc.timeout_ms);
        if hc.timeout_ms > hc.interval_ms && hc.interval_ms > 0 {
            c.fail(
                "spec.healthCheck.timeoutMs",
                format!(
                    "{} must not exceed spec.healthCheck.intervalMs ({})",
                    hc.timeout_ms, hc.interval_ms
                ),
            );
        }
        if hc.unhealthy_threshold == 0 {
            c.fail("spec.healthCheck.unhealthyThreshold", "must be at least 1");
        }
        if hc.healthy_threshold == 0 {
            c.fail("spec.healthCheck.healthyThreshold", "must be at least 1");
        }
        check_cert_ttl(
            c,
            "spec.workloadCertTtlSeconds",
            spec.workload_cert_ttl_seconds,
        );
        check_cert_ttl(c, "spec.nodeCertTtlSeconds", spec.node_cert_ttl_seconds);
        if let Some(t) = spec.request_timeout_ms {
            check_timeout(c, "spec.requestTimeoutMs", t, MAX_TIMEOUT_MS);
        }
        if spec.default_retry_attempts > MAX_RETRY_ATTEMPTS {
            c.fail(
                "spec.defaultRetryAttempts",
                format!(
                    "must be at most {MAX_RETRY_ATTEMPTS}, got {}",
                    spec.default_retry_attempts
                ),
            );
        }
        check_observability(c, &spec.observability);
    }
}

fn check_cert_ttl(c: &mut Checker<'_>, field: &str, seconds: u64) {
    if !(MIN_CERT_TTL_SECONDS..=MAX_CERT_TTL_SECONDS).contains(&seconds) {
        c.fail(
            field,
            format!(
                "{seconds} is out of range: a certificate lifetime is {MIN_CERT_TTL_SECONDS} to {MAX_CERT_TTL_SECONDS} seconds (90 days)"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Percent, Resource};

    fn errors(yaml_spec: &str) -> Vec<String> {
        let json = format!(
            r#"{{"apiVersion":"mesh/v1","kind":"MeshConfig","metadata":{{"name":"mesh"}},"spec":{yaml_spec}}}"#
        );
        match Resource::from_json(json.as_bytes()) {
            Ok(_) => Vec::new(),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn certificate_lifetimes_default_to_a_day() {
        let spec = MeshConfigSpec::default();
        assert_eq!(spec.workload_cert_ttl_seconds, 86_400);
        assert_eq!(spec.node_cert_ttl_seconds, 86_400);
        assert!(errors("{}").is_empty());
        assert!(errors(r#"{"workloadCertTtlSeconds":10,"nodeCertTtlSeconds":7776000}"#).is_empty());
    }

    #[test]
    fn request_settings_and_observability_default_and_parse() {
        let spec = MeshConfigSpec::default();
        assert_eq!(spec.request_timeout_ms, None);
        assert_eq!(spec.default_retry_attempts, 0);
        let o = &spec.observability;
        assert!(o.metrics && !o.access_log.enabled && !o.tracing.enabled);
        assert_eq!(o.access_log.file(), None);
        assert_eq!(o.tracing.sampling_percent.fraction(), 0.01);
        let json = r#"{"apiVersion":"mesh/v1","kind":"MeshConfig","metadata":{"name":"mesh"},"spec":{"requestTimeoutMs":1500,"defaultRetryAttempts":2,"observability":{"metrics":false,"accessLog":{"enabled":true,"format":"json","path":"/var/log/mesh.log"},"tracing":{"enabled":true,"samplingPercent":0.5}}}}"#;
        let Resource::MeshConfig(m) = Resource::from_json(json.as_bytes()).unwrap() else {
            panic!("not a MeshConfig")
        };
        assert_eq!(m.spec.request_timeout_ms, Some(1500));
        assert_eq!(m.spec.default_retry_attempts, 2);
        let o = &m.spec.observability;
        assert!(!o.metrics && o.access_log.enabled && o.tracing.enabled);
        assert_eq!(o.access_log.file(), Some("/var/log/mesh.log"));
        assert_eq!(o.tracing.sampling_percent.fraction(), 0.005);
        // Each part defaults on its own.
        let partial = r#"{"apiVersion":"mesh/v1","kind":"MeshConfig","metadata":{"name":"mesh"},"spec":{"observability":{"tracing":{"enabled":true}}}}"#;
        let Resource::MeshConfig(m) = Resource::from_json(partial.as_bytes()).unwrap() else {
            panic!("not a MeshConfig")
        };
        assert!(m.spec.observability.metrics);
        assert_eq!(m.spec.observability.tracing.sampling_percent, Percent::ONE);
    }

    #[test]
    fn request_settings_and_observability_out_of_range_are_refused() {
        assert_eq!(
            errors(r#"{"requestTimeoutMs":0,"defaultRetryAttempts":11,"observability":{"accessLog":{"path":"logs/access.log"}}}"#),
            ["MeshConfig mesh: spec.requestTimeoutMs: must be greater than 0\nMeshConfig mesh: spec.defaultRetryAttempts: must be at most 10, got 11\nMeshConfig mesh: spec.observability.accessLog.path: \"logs/access.log\" must be \"stdout\" or an absolute file path"]
        );
        let e = errors(r#"{"requestTimeoutMs":86400001}"#);
        assert!(
            e[0].ends_with("spec.requestTimeoutMs: must be at most 86400000 (1 day), got 86400001"),
            "{e:?}"
        );
        let e = errors(r#"{"observability":{"accessLog":{"path":"/var/log/"}}}"#);
        assert!(e[0].contains("spec.observability.accessLog.path"), "{e:?}");
        let e = errors(r#"{"observability":{"tracing":{"samplingPercent":101}}}"#);
        assert_eq!(e, ["MeshConfig mesh: spec.observability.tracing.samplingPercent: 101 is not a percentage (0 to 100)"]);
        let e = errors(r#"{"observability":{"accessLog":{"format":"text"}}}"#);
        assert!(
            e[0].contains("unknown variant `text`, expected `json`"),
            "{e:?}"
        );
    }

    #[test]
    fn certificate_lifetimes_out_of_range_are_refused() {
        let e = errors(r#"{"workloadCertTtlSeconds":9}"#);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("spec.workloadCertTtlSeconds"), "{e:?}");
        assert!(e[0].contains("9 is out of range"), "{e:?}");
        let e = errors(r#"{"nodeCertTtlSeconds":7776001}"#);
        assert!(e[0].contains("spec.nodeCertTtlSeconds"), "{e:?}");
        let e = errors(r#"{"workloadCertTtlSeconds":0}"#);
        assert!(e[0].contains("spec.workloadCertTtlSeconds"), "{e:?}");
    }
}
