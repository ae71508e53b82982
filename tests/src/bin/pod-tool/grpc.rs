//! gRPC with tonic (tests/proto/podtool.proto, service `podtool.Echo`): `grpc-serve`, and the
//! clients `grpc-call` (unary calls, all on one channel: one HTTP/2 connection) and
//! `grpc-chat` (one bidirectional stream, message by message in lockstep).

use anyhow::{bail, ensure, Context, Result};
use futures_util::StreamExt;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap, MetadataValue};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status, Streaming};

mod pb {
    tonic::include_proto!("podtool");
}

use pb::echo_client::EchoClient;
use pb::echo_server::{Echo, EchoServer};
use pb::{CallReply, CallRequest, Msg};

/// Longest `delay_ms` the server honours.
const MAX_DELAY_MS: u32 = 600_000;

#[derive(Clone)]
struct EchoService {
    name: String,
}

impl EchoService {
    /// `x-served-by` on every answer, as http-serve does.
    fn metadata(&self) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Ok(v) = MetadataValue::try_from(self.name.as_str()) {
            m.insert("x-served-by", v);
        }
        m
    }
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn call(&self, req: Request<CallRequest>) -> Result<Response<CallReply>, Status> {
        let req = req.into_inner();
        if req.delay_ms > MAX_DELAY_MS {
            return Err(Status::invalid_argument(format!(
                "delay_ms {} is over {MAX_DELAY_MS}",
                req.delay_ms
            )));
        }
        tokio::time::sleep(Duration::from_millis(req.delay_ms.into())).await;
        if req.fail_code != 0 {
            let code = Code::from(req.fail_code);
            let msg = format!("asked to fail with {}", code_name(code));
            return Err(Status::with_metadata(code, msg, self.metadata()));
        }
        let mut resp = Response::new(CallReply {
            message: req.message,
            served_by: self.name.clone(),
        });
        *resp.metadata_mut() = self.metadata();
        Ok(resp)
    }

    type ChatStream = ReceiverStream<Result<Msg, Status>>;

    async fn chat(
        &self,
        req: Request<Streaming<Msg>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let name = self.name.clone();
        tokio::spawn(async move {
            loop {
                let reply = match inbound.message().await {
                    Ok(Some(m)) => Ok(Msg {
                        text: m.text,
                        served_by: name.clone(),
                    }),
                    Ok(None) => return,
                    Err(status) => Err(status),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        let mut resp = Response::new(ReceiverStream::new(rx));
        *resp.metadata_mut() = self.metadata();
        Ok(resp)
    }
}

/// Serves `podtool.Echo` on every address until killed.
pub fn serve(addrs: &[SocketAddr], name: String) -> Result<()> {
    let service = EchoService { name };
    crate::tcp::serve_with(addrs, |listener| {
        let service = service.clone();
        tokio::spawn(async move {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(EchoServer::new(service))
                .serve_with_incoming(incoming)
                .await
            {
                eprintln!("pod-tool: grpc server: {e}");
            }
        })
    })
}

#[derive(clap::Args)]
pub struct CallArgs {
    /// `ip:port` or `[ipv6]:port` of a grpc-serve.
    #[arg(long)]
    connect: String,
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Calls in flight at once (all on the one channel).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// The server sleeps this long before answering.
    #[arg(long, default_value_t = 0)]
    delay_ms: u32,
    /// The server answers with this gRPC status code (e.g. 14 for UNAVAILABLE).
    #[arg(long, default_value_t = 0)]
    fail_code: i32,
    /// Sent as `grpc-timeout`. tonic enforces it on both ends too, and reports its own expiry
    /// as CANCELLED "Timeout expired"; a DEADLINE_EXCEEDED comes from someone else (the mesh).
    #[arg(long)]
    deadline_ms: Option<u64>,
    /// Request metadata (an HTTP/2 header), `name: value`, on every call; repeat for more.
    #[arg(short = 'H', long = "metadata")]
    metadata: Vec<String>,
}

/// Prints `{"codes": {NAME: n}, "served_by": {name: n}, "messages": [first reply],
/// "error_samples": [...]}`; a call with no answer within the deadline plus 1 s (30 s
/// without one) counts as `LOCAL_TIMEOUT`. Exits non-zero only on bad arguments.
pub fn call(args: CallArgs) -> Result<()> {
    ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    let metadata = args
        .metadata
        .iter()
        .map(|m| parse_metadata(m))
        .collect::<Result<Vec<_>>>()?;
    let rt = runtime()?;
    let summary = rt.block_on(async {
        let client = EchoClient::new(channel(&args.connect)?);
        let deadline = args.deadline_ms.map(Duration::from_millis);
        let give_up = deadline.map_or(Duration::from_secs(30), |d| d + Duration::from_secs(1));
        let calls = (0..args.count).map(|i| {
            let mut client = client.clone();
            let mut req = Request::new(CallRequest {
                message: format!("call {i}"),
                delay_ms: args.delay_ms,
                fail_code: args.fail_code,
            });
            if let Some(d) = deadline {
                req.set_timeout(d);
            }
            for (name, value) in &metadata {
                req.metadata_mut().append(name.clone(), value.clone());
            }
            async move { tokio::time::timeout(give_up, client.call(req)).await }
        });
        let mut results = futures_util::stream::iter(calls).buffer_unordered(args.concurrency);
        let mut s = CallSummary::default();
        while let Some(result) = results.next().await {
            s.add(result.map_err(|_| "LOCAL_TIMEOUT"));
        }
        anyhow::Ok(s)
    })?;
    println!(
        "{}",
        json!({
            "codes": summary.codes,
            "served_by": summary.served_by,
            "messages": summary.first_message.into_iter().collect::<Vec<_>>(),
            "error_samples": summary.error_samples,
        })
    );
    Ok(())
}

/// One `-H 'name: value'` of grpc-call, as ASCII metadata.
fn parse_metadata(arg: &str) -> Result<(AsciiMetadataKey, AsciiMetadataValue)> {
    let (name, value) = arg
        .split_once(':')
        .with_context(|| format!("metadata {arg:?} is not `name: value`"))?;
    let name = AsciiMetadataKey::from_bytes(name.trim().as_bytes())
        .with_context(|| format!("bad metadata name in {arg:?}"))?;
    let value = AsciiMetadataValue::try_from(value.trim())
        .with_context(|| format!("bad metadata value in {arg:?}"))?;
    Ok((name, value))
}

#[derive(Default)]
struct CallSummary {
    codes: BTreeMap<&'static str, u64>,
    served_by: BTreeMap<String, u64>,
    first_message: Option<String>,
    error_samples: Vec<String>,
}

impl CallSummary {
    fn add(&mut self, result: Result<Result<Response<CallReply>, Status>, &'static str>) {
        let code = match result {
            Ok(Ok(resp)) => {
                let reply = resp.into_inner();
                *self.served_by.entry(reply.served_by).or_default() += 1;
                self.first_message.get_or_insert(reply.message);
                code_name(Code::Ok)
            }
            Ok(Err(status)) => {
                if self.error_samples.len() < 3 {
                    let sample = format!("{}: {}", code_name(status.code()), status.message());
                    self.error_samples.push(sample);
                }
                code_name(status.code())
            }
            Err(local) => local,
        };
        *self.codes.entry(code).or_default() += 1;
    }
}

#[derive(clap::Args)]
pub struct ChatArgs {
    #[arg(long)]
    connect: String,
    #[arg(long, default_value_t = 10)]
    messages: usize,
    /// For the whole stream.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

/// Sends each message on one stream and waits for its echo before the next; prints
/// `{"echoed": N, "served_by": [names]}`. Fails on a missing or different echo.
pub fn chat(args: ChatArgs) -> Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let rt = runtime()?;
    let served_by = rt
        .block_on(async { tokio::time::timeout(timeout, lockstep(&args)).await })
        .with_context(|| format!("chat with {}: timed out after {timeout:?}", args.connect))??;
    println!(
        "{}",
        json!({"echoed": args.messages, "served_by": served_by})
    );
    Ok(())
}

async fn lockstep(args: &ChatArgs) -> Result<BTreeSet<String>> {
    let mut client = EchoClient::new(channel(&args.connect)?);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let msg = |i: usize| Msg {
        text: format!("message {i} of {}", args.messages),
        served_by: String::new(),
    };
    // The first message goes with the request, so nothing waits on headers alone.
    if args.messages > 0 {
        tx.send(msg(0)).await?;
    }
    let mut inbound = client
        .chat(ReceiverStream::new(rx))
        .await
        .context("opening the stream")?
        .into_inner();
    let mut served_by = BTreeSet::new();
    for i in 0..args.messages {
        if i > 0 {
            tx.send(msg(i)).await.context("the stream closed")?;
        }
        let Some(echo) = inbound
            .message()
            .await
            .with_context(|| format!("echo {i}"))?
        else {
            bail!("the stream ended after {i} echoes");
        };
        ensure!(echo.text == msg(i).text, "echo {i}: got {:?}", echo.text);
        served_by.insert(echo.served_by);
    }
    drop(tx);
    if let Some(extra) = inbound.message().await.context("closing the stream")? {
        bail!("an echo nobody sent: {extra:?}");
    }
    Ok(served_by)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// A channel that connects on first use (so a refused connection is a call's UNAVAILABLE, as
/// for any gRPC client, not a start-up failure) and keeps that one HTTP/2 connection.
fn channel(addr: &str) -> Result<Channel> {
    let addr = crate::resolve(addr)?;
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// The status code's name as gRPC spells it (`DEADLINE_EXCEEDED`), for the JSON summaries.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_match_the_grpc_spec() {
        assert_eq!(code_name(Code::from(0)), "OK");
        assert_eq!(code_name(Code::from(4)), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(Code::from(14)), "UNAVAILABLE");
        assert_eq!(code_name(Code::from(16)), "UNAUTHENTICATED");
        // Out-of-range codes are UNKNOWN, as the spec says.
        assert_eq!(code_name(Code::from(99)), "UNKNOWN");
    }

    #[test]
    fn metadata_arguments() {
        let (name, value) = parse_metadata("Authorization: Bearer a.b.c").unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("authorization", "Bearer a.b.c")
        );
        for bad in ["no-colon", "bad name: v", "x-bin-bin: \u{7f}"] {
            assert!(parse_metadata(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn summary_counts_codes_and_keeps_the_first_reply() {
        let mut s = CallSummary::default();
        let reply = |m: &str, by: &str| {
            Ok(Ok(Response::new(CallReply {
                message: m.into(),
                served_by: by.into(),
            })))
        };
        s.add(reply("call 0", "a"));
        s.add(reply("call 1", "b"));
        s.add(reply("call 2", "a"));
        s.add(Ok(Err(Status::unavailable("down"))));
        s.add(Err("LOCAL_TIMEOUT"));
        assert_eq!(
            s.codes,
            BTreeMap::from([("OK", 3), ("UNAVAILABLE", 1), ("LOCAL_TIMEOUT", 1)])
        );
        assert_eq!(
            s.served_by,
            BTreeMap::from([("a".into(), 2), ("b".into(), 1)])
        );
        assert_eq!(s.first_message.as_deref(), Some("call 0"));
        assert_eq!(s.error_samples, ["UNAVAILABLE: down"]);
    }
}
