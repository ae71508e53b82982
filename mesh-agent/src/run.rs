//! `mesh-agent run`: wire the parts together and serve until SIGTERM/SIGINT.
//!
//! Shutting down leaves every attachment and pinned map in place on purpose: while the agent
//! is away, captured traffic fails closed, and the next agent resumes where this one stopped.
//! An agent started while another runs on the node takes over from it (`handover`): the old
//! one hands over its listeners and drains, so nothing is refused meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use mesh_api::Snapshot;

use crate::admin::{self, AdminListeners};
use crate::agent::Agent;
use crate::control::{
    self, ConfigCacheFile, ConfigState, ControlPlane, ControlPlaneSigner, NodeIdentity,
};
use crate::datapath::{own_cgroup_id, CaptureSet, Datapath, Layout};
use crate::handover::{self, OwnListeners};
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
    let cgroup_id = own_cgroup_id().context("finding the agent's own cgroup")?;
    // Before anything else, and before anything changes in the kernel: a running agent hands
    // over to this one (an upgrade), or refuses and is left as it was.
    let place = handover::Place {
        node: settings.node_name.clone(),
        bpffs: settings.bpffs.clone(),
        cgroup_root: cgroup_root.clone(),
    };
    let inheritance = handover::take_over(&settings.state_dir, Layout::of_this_agent()?, place)
        .await
        .context("taking over from the agent running on this node")?;
    // With a control plane, the node's identity comes first (joining if need be): a node
    // that cannot prove who it is changes nothing in the kernel.
    let node_identity = if settings.control_plane.is_empty() {
        None
    } else {
        Some(
            NodeIdentity::bootstrap(
                &settings.identity_dir,
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
    let agents: Vec<u64> = std::iter::once(cgroup_id)
        .chain(inheritance.as_ref().map(|i| i.predecessor_cgroup))
        .collect();
    let node_attachments = datapath
        .serve_node(&cgroup_root, &agents)
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
        cgroup_id,
        handover: Default::default(),
        inherited: Default::default(),
        predecessor_cgroup: parking_lot::Mutex::new(
            inheritance.as_ref().map(|i| i.predecessor_cgroup),
        ),
    });
    if inheritance.is_some() {
        agent.handover.set_predecessor_draining(true);
        // The old agent accepts on the listeners until this one is ready to.
        agent.proxy.accepting.send_replace(false);
    }
    agent.metrics.register_counter(
        "hbone_connections_opened",
        "HBONE (mutual TLS HTTP/2) connections this node opened to other nodes",
        agent.proxy.hbone.opened.clone(),
    );
    agent.metrics.register_counter(
        "hbone_early_data_streams",
        "HBONE streams whose CONNECT carried the app's first bytes (sent before the answer)",
        agent.proxy.hbone.early_data.clone(),
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
    // A successor with no config yet waits for the control plane's before it takes over.
    let wait_for_config = cached.is_none() && !settings.control_plane.is_empty();
    match &cached {
        Some(state) => control::install(&agent, snapshot, state, origin)?,
        // With a control plane and no usable cache this agent has no config yet, not an
        // empty one: the capture set in the kernel (the running agent's, or what the last one
        // left) stays as it is until the control plane's first push. Emptying it would let
        // the pods' connections go around the mesh meanwhile.
        None if wait_for_config => agent.registry.replace(snapshot, origin, Some(1)),
        None => install_static(&agent, snapshot, origin, Some(1))?,
    }
    // What a successor takes over: the admin listeners (served now at a cold start, so
    // enrollments go on during resume; after the handover otherwise) and the handover socket.
    let (admin_listeners, handover_listener, inheritance) = match inheritance {
        None => {
            let admin = AdminListeners::bind(
                settings.admin_addr,
                &admin::socket_path(&settings.state_dir),
            )?;
            let handover = handover::Listener::bind(&handover::socket_path(&settings.state_dir))?;
            (admin, handover, None)
        }
        Some(inheritance) => {
            *agent.inherited.lock() = inheritance.pods;
            (
                inheritance.admin,
                inheritance.handover,
                Some(inheritance.pending),
            )
        }
    };
    let own_listeners = OwnListeners::of(&admin_listeners, &handover_listener)?;
    // Tasks that stop when a successor takes over.
    let mut serving = Vec::new();
    let mut admin_listeners = Some(admin_listeners);
    if inheritance.is_none() {
        if let Some(admin) = admin_listeners.take() {
            serving.extend(admin.serve(agent.clone())?);
        }
    }
    agent.resume().await?;
    // Listeners of saved pods that were not resumed (gone meanwhile): closed, not kept.
    let unused = std::mem::take(&mut *agent.inherited.lock());
    if !unused.is_empty() {
        tracing::info!(
            pods = unused.len(),
            "closing handed-over listeners of pods not resumed"
        );
    }
    // After resume, which saves once every saved pod is back: a save before would forget the
    // pods not resumed yet.
    serving.push(tokio::spawn(crate::pods::save_on_changes(agent.clone())));
    serving.push(tokio::spawn(health::run(
        agent.clone(),
        settings.control_plane.is_empty(),
    )));
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
    if let Some(pending) = inheritance {
        handover::complete_takeover(&agent, pending, wait_for_config).await?;
        if let Some(admin) = admin_listeners.take() {
            serving.extend(admin.serve(agent.clone())?);
        }
    }
    agent.ready.store(true, Ordering::Release);
    // What start-up allocated and freed (the eBPF object, the config) goes back now, and
    // whatever a burst of connections leaves behind later.
    crate::sys::heap::release_free_heap().await;
    tokio::spawn(crate::sys::heap::release_free_heap_periodically());
    let stop = serving.iter().map(|t| t.abort_handle()).collect::<Vec<_>>();
    handover::serve(agent.clone(), handover_listener, own_listeners, {
        let agent = agent.clone();
        let runtime = tokio::runtime::Handle::current();
        move || {
            for task in &stop {
                task.abort();
            }
            runtime.block_on(agent.stop_serving_pods());
        }
    });
    tracing::info!(node = %agent.node, admin = %settings.admin_addr, "agent ready");

    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = hangup.recv() => if settings.control_plane.is_empty() { reload(&agent, &settings) },
            _ = agent.handover.released() => break,
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    if !agent.handover.is_released() {
        // No successor: stop accepting (captured connections are refused from now on, fail
        // closed) and drain the same way. The admin routes stay up meanwhile.
        agent.handover.stop();
        agent.stop_serving_pods().await;
    }
    agent.proxy.drain.start();
    let live = agent.proxy.drain.live();
    tracing::info!(
        connections = live,
        deadline_secs = settings.drain_timeout.as_secs(),
        "draining"
    );
    let left = agent
        .proxy
        .drain
        .finished_within(settings.drain_timeout)
        .await;
    tracing::info!(
        closed_at_deadline = left,
        "stopping; capture stays attached and fails closed until the next agent starts"
    );
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
