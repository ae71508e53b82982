//! The admin service behind `meshctl`: generic apply/get/delete/watch for every kind, and the
//! operations of the original design on top of them.
//!
//! Every change is validated twice: the resource on its own (mesh-api), and the whole config
//! as it would be after the change (`change_check`: against the current config's indexes, or
//! as a full `Snapshot`), so nothing that agents would have to reject ever reaches the store.
//! A rejected change stores nothing.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use mesh_api::{Resource, Snapshot};
use mesh_proto::v1::mesh_admin_server::MeshAdmin;
use mesh_proto::v1::{self as pb, watch_event};
use tonic::{Request, Response, Status};

use super::ca_view;
use super::cache::{resource_ref, ConfigCache};
use super::metrics::ServerMetrics;
use crate::keys;
use crate::store::{Event, SharedStore};

pub struct Admin {
    pub cache: Arc<ConfigCache>,
    pub store: SharedStore,
    pub replica: String,
    pub metrics: Arc<ServerMetrics>,
    /// Applies on one replica run one at a time, so each validates against the state the
    /// previous one left.
    pub apply_lock: tokio::sync::Mutex<()>,
    pub ca: Arc<super::ca::Ca>,
    /// This replica's jwksUri fetches, for `status`.
    pub jwks: Arc<super::jwks::JwksStatus>,
}

fn store_error(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("store: {e}"))
}

fn key_of(resource: &Resource) -> String {
    keys::resource_of_ref(&resource_ref(resource))
}

impl Admin {
    /// Validates `changes` against the current config and writes them. `None` = delete.
    async fn change(
        &self,
        changes: Vec<(String, Option<Resource>)>,
        source: &str,
        dry_run: bool,
    ) -> Result<pb::ApplyResponse, Status> {
        let _guard = self.apply_lock.lock().await;
        let checked = super::change_check::check_changes(&self.cache, &changes, source)?;
        let mut warnings = super::http_rule_warnings::for_changes(&self.cache, &changes);
        let mut response = pb::ApplyResponse::default();
        // (key, new JSON; `None` = delete), in request order.
        let mut writes: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        for (i, (key, resource)) in changes.into_iter().enumerate() {
            let Some(resource) = resource else {
                if !dry_run {
                    writes.push((key, None));
                }
                continue;
            };
            let existing = self.cache.resource(&key);
            let outcome = match &existing {
                Some(cached) if *cached.resource == resource => "unchanged",
                Some(_) => "configured",
                None => "created",
            };
            if outcome != "unchanged" && !dry_run {
                let json =
                    serde_json::to_vec(&resource).map_err(|e| Status::internal(e.to_string()))?;
                writes.push((key, Some(json)));
            }
            response.results.push(pb::ApplyResult {
                r#ref: Some(resource_ref(&resource)),
                outcome: outcome.into(),
                warnings: std::mem::take(&mut warnings[i]),
            });
        }
        // A key given twice: only its last value is written (what writing both in order
        // would leave; etcd refuses a Txn naming a key twice).
        let mut seen = HashSet::new();
        let mut writes: Vec<_> = writes
            .into_iter()
            .rev()
            .filter(|(key, _)| seen.insert(key.clone()))
            .collect();
        writes.reverse();
        // All or nothing: one redb transaction, or one etcd Txn (see `Store::apply`).
        let revisions = if writes.is_empty() {
            Vec::new()
        } else {
            self.store.apply(writes).await.map_err(store_error)?
        };
        let last = revisions.into_iter().flatten().max().unwrap_or(0);
        if last > 0 {
            self.cache.wait_for(last).await;
        }
        // Freed only now, once the change is on its way to the agents: freeing a whole-config
        // snapshot costs a sixth of building it. (Not on another thread: glibc frees memory of
        // another thread's arena much more slowly.)
        if checked.was_full() && !dry_run {
            drop(checked);
            // Re-validate the new config off the latency path, so the next change can be
            // checked against its indexes.
            let cache = self.cache.clone();
            tokio::task::spawn_blocking(move || cache.validate_current());
        }
        response.version = self.cache.version();
        Ok(response)
    }

    /// Applies `resources`; with `only_kinds`, each must be of one of those kinds.
    async fn apply_resources(
        &self,
        resources: Vec<pb::Resource>,
        source: &str,
        dry_run: bool,
        only_kinds: Option<&[&str]>,
    ) -> Result<pb::ApplyResponse, Status> {
        let mut changes = Vec::new();
        for (i, r) in resources.iter().enumerate() {
            let resource = Resource::from_json(&r.json).map_err(|e| {
                let at = if source.is_empty() {
                    format!("resource {}", i + 1)
                } else {
                    source.to_owned()
                };
                Status::invalid_argument(format!("{at}: {e}"))
            })?;
            if let Some(kinds) = only_kinds {
                if !kinds.contains(&resource.kind()) {
                    return Err(Status::invalid_argument(format!(
                        "expected {}, got a {}",
                        one_of(kinds),
                        resource.kind()
                    )));
                }
            }
            changes.push((key_of(&resource), Some(resource)));
        }
        self.change(changes, source, dry_run).await
    }

    /// The single-resource RPCs (AddTrafficRule, AddSecurityRule, SetMeshConfig): one
    /// resource of one of `kinds`.
    async fn apply_one(
        &self,
        request: Request<pb::ResourceRequest>,
        rpc: &str,
        kinds: &[&str],
    ) -> Result<pb::ApplyResponse, Status> {
        let resource = request
            .into_inner()
            .resource
            .ok_or_else(|| Status::invalid_argument("resource is required"))?;
        self.apply_resources(vec![resource], rpc, false, Some(kinds))
            .await
    }

    /// The stored MeshConfig, or the defaults when none was set.
    fn mesh_config(&self) -> Resource {
        self.cache
            .resources_under(&format!("{}MeshConfig/", keys::RESOURCES))
            .first()
            .map(|c| (*c.resource).clone())
            .unwrap_or_else(|| Resource::from(mesh_api::MeshConfig::default()))
    }

    fn list(&self, kind: &str, namespace: &str, name: &str) -> Result<pb::GetResponse, Status> {
        let kind = canonical_kind(kind)?;
        let mut prefix = format!("{}{kind}/", keys::RESOURCES);
        if !namespace.is_empty() || !name.is_empty() {
            prefix.push_str(namespace);
            prefix.push('/');
            prefix.push_str(name);
        }
        let resources = self
            .cache
            .resources_under(&prefix)
            .into_iter()
            // A name given means that exact name, not a prefix of names.
            .filter(|c| name.is_empty() || c.resource.key().name == name)
            .map(|c| pb::Resource {
                json: c.json.to_vec(),
            })
            .collect::<Vec<_>>();
        if !name.is_empty() && resources.is_empty() {
            return Err(Status::not_found(format!(
                "{kind} {namespace}/{name} not found"
            )));
        }
        Ok(pb::GetResponse {
            resources,
            version: self.cache.version(),
        })
    }

    fn snapshot(&self) -> Result<Snapshot, Status> {
        Snapshot::from_resources(self.cache.resources().into_iter().map(|r| (*r).clone()))
            .map_err(|e| Status::internal(format!("stored config is inconsistent: {e}")))
    }
}

/// The kinds of a security rule (AddSecurityRule, ListSecurityRules): the original design's
/// rule (who may call whom, with which methods, with which end-user token, over which mTLS
/// mode) is one resource of each.
pub const SECURITY_RULE_KINDS: &[&str] = &[
    "AuthorizationPolicy",
    "RequestAuthentication",
    "PeerAuthentication",
];

/// `a Route`, `an AuthorizationPolicy, a RequestAuthentication or a PeerAuthentication`.
fn one_of(kinds: &[&str]) -> String {
    let article = |kind: &str| {
        let vowel = kind.starts_with(['A', 'E', 'I', 'O', 'U']);
        format!("{} {kind}", if vowel { "an" } else { "a" })
    };
    match kinds {
        [] => String::new(),
        [one] => article(one),
        [rest @ .., last] => {
            let rest: Vec<String> = rest.iter().map(|k| article(k)).collect();
            format!("{} or {}", rest.join(", "), article(last))
        }
    }
}

/// The kind a user means: "Service", "service" or "services" (and "...policies").
pub fn canonical_kind(kind: &str) -> Result<&'static str, Status> {
    let wanted = kind.to_ascii_lowercase();
    Resource::KINDS
        .iter()
        .copied()
        .find(|known| {
            let k = known.to_ascii_lowercase();
            let plural = match k.strip_suffix('y') {
                Some(stem) => format!("{stem}ies"),
                None => format!("{k}s"),
            };
            wanted == k || wanted == plural
        })
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "unknown kind {kind:?}; kinds: {}",
                Resource::KINDS.join(", ")
            ))
        })
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl MeshAdmin for Admin {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(
            self.apply_resources(r.resources, &r.source, r.dry_run, None)
                .await?,
        ))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(self.list(&r.kind, &r.namespace, &r.name)?))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let reference = request
            .into_inner()
            .r#ref
            .ok_or_else(|| Status::invalid_argument("ref is required"))?;
        let kind = canonical_kind(&reference.kind)?;
        let key = keys::resource(kind, &reference.namespace, &reference.name);
        if self.cache.resource(&key).is_none() {
            return Err(Status::not_found(format!(
                "{kind} {}/{} not found",
                reference.namespace, reference.name
            )));
        }
        let response = self.change(vec![(key, None)], "", false).await?;
        Ok(Response::new(pb::DeleteResponse {
            deleted: true,
            version: response.version,
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let r = request.into_inner();
        let prefix = if r.kind.is_empty() {
            keys::RESOURCES.to_owned()
        } else {
            format!("{}{}/", keys::RESOURCES, canonical_kind(&r.kind)?)
        };
        let mut initial = Vec::new();
        let from = if r.from_version == 0 {
            let version = self.cache.version();
            for cached in self.cache.resources_under(&prefix) {
                initial.push(Ok(pb::WatchEvent {
                    version,
                    event: Some(watch_event::Event::Upsert(pb::Resource {
                        json: cached.json.to_vec(),
                    })),
                }));
            }
            version
        } else {
            r.from_version
        };
        let events = self.store.watch(&prefix, from).await.map_err(store_error)?;
        let live = events.flat_map(|batch| {
            let items: Vec<Result<pb::WatchEvent, Status>> = match batch {
                Ok(batch) => batch.into_iter().map(|e| Ok(to_watch_event(e))).collect(),
                Err(e) => vec![Err(store_error(e))],
            };
            futures::stream::iter(items)
        });
        Ok(Response::new(Box::pin(
            futures::stream::iter(initial).chain(live),
        )))
    }

    async fn register_endpoint(
        &self,
        request: Request<pb::RegisterEndpointRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let r = request.into_inner();
        let workload = serde_json::json!({
            "apiVersion": mesh_api::API_VERSION,
            "kind": "Workload",
            "metadata": {"name": r.name, "namespace": if r.namespace.is_empty() { "default".to_owned() } else { r.namespace }},
            "spec": {
                "uid": r.uid,
                "ips": r.ips,
                "node": r.node,
                "serviceAccount": if r.service_account.is_empty() { "default".to_owned() } else { r.service_account },
                "labels": r.labels,
            },
        });
        let json = serde_json::to_vec(&workload).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(
            self.apply_resources(vec![pb::Resource { json }], "RegisterEndpoint", false, None)
                .await?,
        ))
    }

    async fn deregister_endpoint(
        &self,
        request: Request<pb::DeregisterEndpointRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let r = request.into_inner();
        let reference = pb::ResourceRef {
            kind: "Workload".into(),
            namespace: if r.namespace.is_empty() {
                "default".into()
            } else {
                r.namespace
            },
            name: r.name,
        };
        self.delete(Request::new(pb::DeleteRequest {
            r#ref: Some(reference),
        }))
        .await
    }

    async fn list_endpoints(
        &self,
        request: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        let r = request.into_inner();
        let namespace = if r.namespace.is_empty() {
            "default"
        } else {
            &r.namespace
        };
        let snapshot = self.snapshot()?;
        let service = snapshot.service(namespace, &r.service).ok_or_else(|| {
            Status::not_found(format!("Service {namespace}/{} not found", r.service))
        })?;
        let endpoints = snapshot
            .endpoints(service)
            .into_iter()
            .map(|w| {
                let health = self.cache.health(&w.metadata.namespace, &w.metadata.name);
                pb::Endpoint {
                    namespace: w.metadata.namespace.clone(),
                    workload: w.metadata.name.clone(),
                    ips: w.spec.ips.iter().map(|ip| ip.to_string()).collect(),
                    node: w.spec.node.clone(),
                    health: match &health {
                        Some(h) if h.healthy => "healthy",
                        Some(_) => "unhealthy",
                        None => "unknown",
                    }
                    .into(),
                    health_detail: health.map(|h| h.detail).unwrap_or_default(),
                    weight: w.spec.weight(),
                    locality: w
                        .spec
                        .locality
                        .as_ref()
                        .map(|l| match &l.zone {
                            Some(zone) => format!("{}/{zone}", l.region),
                            None => l.region.clone(),
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
        Ok(Response::new(pb::ListEndpointsResponse { endpoints }))
    }

    async fn add_traffic_rule(
        &self,
        request: Request<pb::ResourceRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        Ok(Response::new(
            self.apply_one(request, "AddTrafficRule", &["Route"])
                .await?,
        ))
    }

    async fn list_traffic_rules(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        Ok(Response::new(self.list(
            "Route",
            &request.into_inner().namespace,
            "",
        )?))
    }

    async fn add_security_rule(
        &self,
        request: Request<pb::ResourceRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        Ok(Response::new(
            self.apply_one(request, "AddSecurityRule", SECURITY_RULE_KINDS)
                .await?,
        ))
    }

    async fn list_security_rules(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let namespace = request.into_inner().namespace;
        let mut rules = pb::GetResponse::default();
        for kind in SECURITY_RULE_KINDS {
            let listed = self.list(kind, &namespace, "")?;
            rules.resources.extend(listed.resources);
            rules.version = listed.version;
        }
        Ok(Response::new(rules))
    }

    async fn get_ca_certificate(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::CaCertificate>, Status> {
        // The trust bundle: every root agents trust (two during a rotation).
        Ok(Response::new(pb::CaCertificate {
            pem: self.ca.trust_bundle_pem(),
        }))
    }

    async fn mesh_metrics(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::MeshMetricsResponse>, Status> {
        let (agents_connected, pushes_sent, acks, nacks) = self.metrics.snapshot();
        Ok(Response::new(pb::MeshMetricsResponse {
            resources_by_kind: self.cache.resource_counts().into_iter().collect(),
            agents_connected,
            pushes_sent,
            acks,
            nacks,
            version: self.cache.version(),
        }))
    }

    async fn status(&self, _: Request<pb::Empty>) -> Result<Response<pb::StatusResponse>, Status> {
        let agents = self
            .cache
            .agents()
            .into_iter()
            .map(|a| pb::AgentStatus {
                node: a.node,
                replica: a.replica,
                connected: a.connected,
                acked_version: a.acked_version,
                last_nack: a.last_nack,
                last_nack_version: a.last_nack_version,
                connected_since: a.connected_since,
                last_seen: a.last_seen,
            })
            .collect();
        Ok(Response::new(pb::StatusResponse {
            version: self.cache.version(),
            replica: self.replica.clone(),
            store: self.store.describe(),
            agents,
            jwks: self
                .jwks
                .snapshot()
                .into_iter()
                .map(|(uri, s)| pb::JwksFetchStatus {
                    uri,
                    last_attempt: s.last_attempt,
                    last_success: s.last_success,
                    last_error: s.last_error,
                })
                .collect(),
        }))
    }

    async fn get_mesh_config(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::Resource>, Status> {
        // None stored: the defaults, as a resource one could edit and apply.
        let json = self.mesh_config().to_json().into_bytes();
        Ok(Response::new(pb::Resource { json }))
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::JoinToken>, Status> {
        let r = request.into_inner();
        let ttl = if r.ttl_seconds == 0 {
            super::tokens::DEFAULT_TTL
        } else {
            std::time::Duration::from_secs(r.ttl_seconds)
        };
        let root = self.ca.current().active_root_der.clone();
        let (token, expires_at) = super::tokens::create(&self.store, &r.node, ttl, &root).await?;
        tracing::info!(node = %r.node, expires_at, "join token created");
        Ok(Response::new(pb::JoinToken { token, expires_at }))
    }

    async fn issue_certificate(
        &self,
        request: Request<pb::IssueCertificateRequest>,
    ) -> Result<Response<pb::SignedCertificate>, Status> {
        let r = request.into_inner();
        Ok(Response::new(super::identity::issue_for_admin(
            &self.ca,
            &self.cache,
            &r.csr_pem,
            r.ttl_seconds,
        )?))
    }

    async fn get_ca_status(&self, _: Request<pb::Empty>) -> Result<Response<pb::CaStatus>, Status> {
        Ok(Response::new(ca_view::ca_status(&self.ca.current())))
    }

    async fn rotate_ca(
        &self,
        request: Request<pb::RotateCaRequest>,
    ) -> Result<Response<pb::CaStatus>, Status> {
        let r = request.into_inner();
        let phase: super::ca::Phase = r
            .phase
            .parse()
            .map_err(|e: anyhow::Error| Status::invalid_argument(e.to_string()))?;
        let new_root = match (r.root_cert_pem.is_empty(), r.root_key_pem.is_empty()) {
            (true, true) => None,
            (false, false) => Some(super::ca::OperatorRoot {
                cert_pem: r.root_cert_pem,
                key_pem: r.root_key_pem,
            }),
            _ => {
                return Err(Status::invalid_argument(
                    "give both the new root certificate and its key, or neither",
                ))
            }
        };
        let trust_domain = super::mesh_config_spec(&self.cache).trust_domain;
        let loaded = self
            .ca
            .rotate(phase, new_root, &trust_domain)
            .await
            .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        tracing::info!(phase = %r.phase, now = loaded.state.phase(), "CA rotation step");
        Ok(Response::new(ca_view::ca_status(&loaded)))
    }

    async fn set_mesh_config(
        &self,
        request: Request<pb::ResourceRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        Ok(Response::new(
            self.apply_one(request, "SetMeshConfig", &["MeshConfig"])
                .await?,
        ))
    }
}

fn to_watch_event(event: Event) -> pb::WatchEvent {
    match event {
        Event::Put(kv) => pb::WatchEvent {
            version: kv.mod_revision,
            event: Some(watch_event::Event::Upsert(pb::Resource { json: kv.value })),
        },
        Event::Delete { key, revision } => pb::WatchEvent {
            version: revision,
            event: keys::parse_resource(&key).map(watch_event::Event::Delete),
        },
    }
}
