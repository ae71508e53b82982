//! Raw bytes on the agent's admin socket: the agent's own HTTP/1 connection handling
//! (`admin::listen::serve`, with its timeouts and limits), its routes (`socket_routes`: the
//! loopback address serves a subset), the enroll body's size limit and parsing, the uid in a
//! path, the log filter's checks and parser. Behind the routes, `Answers` replies without a
//! kernel; what enrollment does with a parsed request is the enroll_request target's.
#![no_main]

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mesh_agent::admin::{listen, socket_routes, AdminApi, Readiness};
use mesh_agent::pods::EnrollRequest;
use mesh_proto::limits::Accept;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Fixed answers, shaped like the agent's: enrollment refused as for an undeclared workload.
struct Answers;

impl AdminApi for Answers {
    type Status = Value;

    async fn readiness(&self) -> Readiness {
        Readiness::new(true, vec!["resume of pod default/a (uid a)".to_owned()])
    }

    fn log_filter(&self) -> Option<String> {
        Some("info".to_owned())
    }

    /// The agent's own directive checks and parser, without touching this process's logging.
    fn set_log_filter(&self, directives: &str) -> Result<String, String> {
        mesh_agent::logging::parse(directives).map(|filter| filter.to_string())
    }

    fn metrics(&self) -> String {
        "# EOF\n".to_owned()
    }

    fn config_dump(&self) -> Value {
        json!({"source": "fuzz", "resources": []})
    }

    async fn status(&self) -> Value {
        json!({"node": "fuzz"})
    }

    async fn enroll(self: Arc<Self>, mut request: EnrollRequest) -> anyhow::Result<()> {
        request.check_declared(&mesh_api::Snapshot::default(), "fuzz")
    }

    async fn unenroll(&self, uid: &str) -> anyhow::Result<()> {
        anyhow::bail!("unenroll {uid}: no pod with this uid is enrolled")
    }
}

/// A listener with one connection to hand out, then none.
struct OneConnection(Mutex<Option<DuplexStream>>);

impl Accept for OneConnection {
    type Stream = DuplexStream;
    type Addr = ();

    fn accept(&self) -> impl Future<Output = io::Result<(DuplexStream, ())>> + Send {
        let next = self.0.lock().unwrap().take();
        async move {
            match next {
                Some(stream) => Ok((stream, ())),
                None => std::future::pending().await,
            }
        }
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        // Room for all of it, so writing never waits on the server reading.
        let (mut client, server) = tokio::io::duplex(data.len().max(1024));
        let listener = OneConnection(Mutex::new(Some(server)));
        let app = socket_routes::<Answers>().with_state(Arc::new(Answers));
        let serving = tokio::spawn(listen::serve(listener, "fuzz".to_owned(), app));
        // The request, then the client hangs up its side and reads what comes back: the
        // server must answer or close, never hold the connection.
        let exchange = async {
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut response = Vec::new();
            let _ = client.read_to_end(&mut response).await;
        };
        let answered = tokio::time::timeout(Duration::from_secs(5), exchange).await;
        serving.abort();
        assert!(
            answered.is_ok(),
            "the admin server held a closed connection"
        );
    });
});
