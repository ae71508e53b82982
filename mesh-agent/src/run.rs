//! `mesh-agent run`: wire the parts together and serve until SIGTERM/SIGINT.
//!
//! Shutting down leaves every attachment and pinned map in place on purpose: while the agent
//! is away, captured traffic fails closed, and the next agent resumes where this one stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use mesh_api::Snapshot;

use crate::admin;
use crate::agent::Agent;
use crate::control::{
    self, ConfigCacheFile, ConfigState, ControlPlane, ControlPlaneSigner, NodeIdentity,
};
use crate::datapath::{CaptureSet, Datapath};
use crate::health;
use crate::metrics::Metrics;
use crate::pods::StateStore;
use crate::registry::Registry;
use crate::settings::Settings;
use crate::sys::fs::{detect_cgroup2_root, require_cgroup2};

pub async fn run(settings: Settings) -> Result<()> {
    crate::sys::caps::require_agent_capabilities()?;
    // Every proxied connection costs two descriptors; the default soft limit (1024) would cap
    // a node at a few hundred connections.
    mesh_proto::limits::raise_open_file_limit();
    let cgroup_root = match &settings.cgroup_root {
        Some(root) => {
            require_cgroup2(root).context("--cgroup-root")?;
            root.clone()
        }
        None => detect_cgroup2_root()?,
    };
    // With a control plane, the node's identity comes first (joining if need be): a node
    // that cannot prove who it is changes nothing in the kernel.
    let node_identity = if settings.control_plane.is_empty() {
        None
    } else {
        Some(
            NodeIdentity::bootstrap(
                &settings.state_dir,
                &settings.node_name,
                settings.control_plane.clone(),
                settings.join_token.as_deref(),
            )
            .await?,
        )
    };
    let (snapshot, origin, cached) = if settings.control_plane.is_empty() {
        let (snapshot, origin) = load_mesh_config(&settings)?;
        (snapshot, origin, None)
    } else {
        cached_config(&settings)?
    };
    // After the config is known to be good: a bad file changes nothing in the kernel.
    let datapath = Datapath::load(&settings.bpffs, settings.capture_capacity)?;
    let node_attachments = datapath
        .serve_node(&cgroup_root)
        .context("attaching the socket hooks to --cgroup-root")?;
    // Filled below, through the same install path later configs take.
    let registry = Arc::new(Registry::new(Snapshot::default(), origin.clone()));
    let agent = Arc::new(Agent {
        node: settings.node_name.clone(),
        datapath,
        node_attachments,
        registry,
        metrics: Arc::new(Metrics::new()),
        state: StateStore::open(&settings.state_dir)?,
        cgroup_root,
        connect_timeout: settings.connect_timeout,
        pods: Default::default(),
        enrolling: Default::default(),
        unresumed: Default::default(),
        local_pods: Default::default(),
        steering_changed: Default::default(),
        ready: AtomicBool::new(false),
        local_health: Default::default(),
        health_changed: Default::default(),
        identities: crate::identity::Identities::new(),
        proxy: Default::default(),
    });
    agent.metrics.register_counter(
        "hbone_connections_opened",
        "HBONE (mutual TLS HTTP/2) connections this node opened to other nodes",
        agent.proxy.hbone.opened.clone(),
    );
    agent.metrics.register_counter(
        "http_retries_over_budget",
        "HTTP retries not made because the service's retry budget was spent",
        agent.proxy.http.retries_over_budget.clone(),
    );
    tokio::spawn(crate::proxy::enforce_on_changes(
        agent.proxy.connections.clone(),
        agent.registry.clone(),
    ));
    match &cached {
        Some(state) => control::install(&agent, snapshot, state, origin)?,
        None => install_static(&agent, snapshot, origin, Some(1))?,
    }
    let _socket = admin::serve_unix(agent.clone(), admin::socket_path(&settings.state_dir)).await?;
    let http = tokio::spawn(admin::serve_http(agent.clone(), settings.admin_addr));
    agent.resume().await?;
    // After resume, which saves once every saved pod is back: a save before would forget the
    // pods not resumed yet.
    tokio::spawn(crate::pods::save_on_changes(agent.clone()));
    agent.ready.store(true, Ordering::Release);
    tokio::spawn(health::run(
        agent.clone(),
        settings.control_plane.is_empty(),
    ));
    if let Some(identity) = node_identity {
        if let Err(e) = agent
            .identities
            .set_trust_bundle_pem(&identity.trust_bundle_pem())
        {
            tracing::warn!(error = %format!("{e:#}"), "the stored trust bundle is unusable");
        }
        agent
            .identities
            .set_signer(Arc::new(ControlPlaneSigner(identity.clone())));
        tokio::spawn(identity.clone().maintain());
        let cache = ControlPlane::new(
            settings.control_plane.clone(),
            identity,
            cached.unwrap_or_default(),
            ConfigCacheFile::new(&settings.state_dir),
        );
        tokio::spawn(cache.run(agent.clone()));
    }
    tracing::info!(node = %agent.node, admin = %settings.admin_addr, "agent ready");

    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::pin!(http);
    loop {
        tokio::select! {
            result = &mut http => return result.context("admin server task")?.context("admin server"),
            _ = hangup.recv() => if settings.control_plane.is_empty() { reload(&agent, &settings) },
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("stopping; capture stays attached and fails closed until the next agent starts");
    Ok(())
}

/// SIGHUP: re-read the local config. A bad file is reported and the last good config stays.
fn reload(agent: &Agent, settings: &Settings) {
    let applied = load_mesh_config(settings)
        .and_then(|(snapshot, origin)| install_static(agent, snapshot, origin, None));
    match applied {
        Ok(()) => tracing::info!(
            version = agent.registry.source().version,
            "local config reloaded"
        ),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "reload rejected; keeping the last good config")
        }
    }
}

/// With a control plane: the last good config from the cache (so an agent started while the
/// control plane is down serves what it had), or an empty mesh.
fn cached_config(settings: &Settings) -> Result<(Snapshot, String, Option<ConfigState>)> {
    let Some(state) = ConfigCacheFile::new(&settings.state_dir).load()? else {
        return Ok((
            Snapshot::default(),
            "none yet (waiting for the control plane)".into(),
            None,
        ));
    };
    match Snapshot::from_resources(state.resources.values().cloned()) {
        Ok(snapshot) => Ok((
            snapshot,
            "cache (control plane not reached yet)".into(),
            Some(state),
        )),
        Err(e) => {
            tracing::error!(error = %e, "the cached config is invalid; starting empty");
            Ok((Snapshot::default(), "none yet (cache invalid)".into(), None))
        }
    }
}

/// Makes a config from the local file the data plane's: capture set, then routing.
fn install_static(
    agent: &Agent,
    snapshot: Snapshot,
    origin: String,
    version: Option<u64>,
) -> Result<()> {
    agent
        .datapath
        .maps
        .sync_capture_set(&capture_set(&snapshot))?;
    agent.registry.replace(snapshot, origin, version);
    Ok(())
}

fn load_mesh_config(settings: &Settings) -> Result<(Snapshot, String)> {
    let Some(path) = &settings.local_config else {
        tracing::warn!("no --local-config: the mesh is empty until config arrives");
        return Ok((Snapshot::default(), "none".into()));
    };
    let resources = mesh_api::load_file(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let snapshot = Snapshot::from_resources(resources)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((snapshot, format!("local file {}", path.display())))
}

/// Service VIPs and workload addresses: what connect4/6 capture.
fn capture_set(snapshot: &Snapshot) -> CaptureSet {
    snapshot.capture_prefixes().into_iter().collect()
}
