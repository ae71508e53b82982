//! rustls configs per identity, cached until the identity's certificate or the trust bundle
//! changes (both are swapped as whole `Arc`s, so pointer equality tells).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use mesh_identity::tls::{self, ClientAuth, Expect};
use mesh_identity::{Credential, SpiffeId, TrustBundle};
use parking_lot::Mutex;
use rustls::{ClientConfig, ServerConfig};

use crate::identity::Identities;

const ALPN_H2: &[u8] = b"h2";

type Cache<C> = Mutex<HashMap<SpiffeId, Cached<C>>>;

struct Cached<C> {
    credential: Arc<Credential>,
    bundle: Arc<TrustBundle>,
    config: Arc<C>,
}

#[derive(Default)]
pub struct TlsConfigs {
    clients: Cache<ClientConfig>,
    servers: Cache<ServerConfig>,
}

impl TlsConfigs {
    /// For connecting as `credential`'s identity. Any identity the bundle vouches for passes
    /// the handshake; the caller then checks it is the one it expects.
    pub fn client(
        &self,
        identities: &Identities,
        credential: &Arc<Credential>,
    ) -> Result<Arc<ClientConfig>> {
        cached(&self.clients, identities, credential, |c, b| {
            let mut config = tls::client_config(Some(c), b, Expect::Any)?;
            config.alpn_protocols = vec![ALPN_H2.to_vec()];
            Ok(config)
        })
    }

    /// For a pod's HBONE listener: presents the pod's certificate, demands the client's.
    pub fn server(
        &self,
        identities: &Identities,
        credential: &Arc<Credential>,
    ) -> Result<Arc<ServerConfig>> {
        cached(&self.servers, identities, credential, |c, b| {
            let mut config = tls::server_config(c, b, ClientAuth::Required)?;
            config.alpn_protocols = vec![ALPN_H2.to_vec()];
            Ok(config)
        })
    }
}

fn cached<C>(
    cache: &Cache<C>,
    identities: &Identities,
    credential: &Arc<Credential>,
    build: impl FnOnce(&Credential, &TrustBundle) -> Result<C>,
) -> Result<Arc<C>> {
    let bundle = identities
        .trust_bundle()
        .context("no trust bundle received from the control plane yet")?;
    let mut cache = cache.lock();
    if let Some(c) = cache.get(credential.id()) {
        if Arc::ptr_eq(&c.credential, credential) && Arc::ptr_eq(&c.bundle, &bundle) {
            return Ok(c.config.clone());
        }
    }
    let config = Arc::new(build(credential, &bundle)?);
    cache.insert(
        credential.id().clone(),
        Cached {
            credential: credential.clone(),
            bundle,
            config: config.clone(),
        },
    );
    Ok(config)
}
