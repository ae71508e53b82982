//! `http-hold`: open N HTTP/1.1 keep-alive connections, one GET on each (answered 2xx, body
//! read), then keep them all open and idle until killed. The benchmark uses it to measure what
//! an idle HTTP connection costs a proxy (the agent's L7 path, or nginx), as `hold` does for
//! plain TCP connections.

use anyhow::{ensure, Context, Result};
use http_body_util::BodyExt;
use std::time::Duration;

use crate::bench::print_json;
use crate::http_client::RequestSpec;

#[derive(clap::Args)]
pub struct HoldArgs {
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Per connection: connecting, the request and its answer.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

pub fn hold(args: HoldArgs) -> Result<()> {
    crate::hold::raise_fd_limit(args.count);
    let spec = RequestSpec::new(&args.url, "GET", &[], 0, false)?;
    let timeout = Duration::from_millis(args.timeout_ms);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut held = Vec::with_capacity(args.count);
        for i in 0..args.count {
            let one = async {
                let mut conn = spec.connect().await?;
                let resp = conn.send(spec.request()?).await?;
                let status = resp.status();
                resp.into_body()
                    .collect()
                    .await
                    .map_err(|e| anyhow::anyhow!("reading body: {e}"))?;
                ensure!(status.is_success(), "answered {status}");
                Ok(conn)
            };
            let conn = tokio::time::timeout(timeout, one)
                .await
                .map_err(|_| anyhow::anyhow!("timed out after {timeout:?}"))
                .and_then(|r| r)
                .with_context(|| format!("connection {i}"))?;
            held.push(conn);
        }
        print_json(serde_json::json!({ "held": held.len() }))?;
        // The connection tasks live on this runtime: keep driving it (they stay idle) so a
        // server that closes a connection is noticed, and never return.
        std::future::pending::<Result<()>>().await
    })
}
