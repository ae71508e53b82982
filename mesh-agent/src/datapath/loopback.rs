//! The `--sockmap-redirect` switch: same-node legs handed socket to socket by `mesh_sk_msg`
//! (mesh-ebpf `loopback.rs`) instead of through loopback TCP.

use anyhow::{Context, Result};
use aya::maps::{Array, SockHash};
use aya::programs::SkMsg;
use mesh_common::{maps as names, programs as prog, settings, SocketPairKey};

use super::{program, Datapath};

impl Datapath {
    /// Turns the redirection on or off for connections established from now on (sockets
    /// already in the map keep it until they close; their messages are still delivered in
    /// order, by one path or the other, never both).
    ///
    /// On: `mesh_sk_msg` is attached to the SOCKHASH. The attachment belongs to the map, not
    /// to this process, so it outlives the agent like the pinned links do, and the next agent
    /// replaces it with its own program.
    pub fn redirect_loopback(&self, on: bool) -> Result<()> {
        let mut ebpf = self.programs.lock();
        if on {
            let sockets: SockHash<_, SocketPairKey> = SockHash::try_from(
                ebpf.map(names::LOOPBACK_SOCKETS)
                    .with_context(|| format!("map {} is missing", names::LOOPBACK_SOCKETS))?,
            )?;
            let fd = sockets.fd().try_clone()?;
            let sk_msg = program::<SkMsg>(&mut ebpf, prog::SK_MSG)?;
            let link = sk_msg
                .attach(&fd)
                .context("attaching sk_msg to MESH_LOOPBACK_SOCKETS")?;
            // Dropping the link would detach the program when this agent exits, leaving
            // sockets in the map that a successor relies on without it (harmless: they fall
            // back to TCP), so keep it attached with the map instead.
            std::mem::forget(sk_msg.take_link(link)?);
        }
        let mut switches: Array<_, u32> = Array::try_from(
            ebpf.map_mut(names::SETTINGS)
                .with_context(|| format!("map {} is missing", names::SETTINGS))?,
        )?;
        switches
            .set(settings::SOCKMAP_REDIRECT, u32::from(on), 0)
            .context("writing MESH_SETTINGS")?;
        Ok(())
    }
}
