//! Join tokens: how a new node proves it may join (`meshctl token create --node N`).
//!
//! A token is `<id>.<secret>.<pin>`: `id` names the record `/mesh/tokens/<id>`, which holds
//! only the SHA-256 of `secret`, the node it is for and its expiry; `pin` is the SHA-256 (hex)
//! of the CA root's DER, so the joining agent can check the control plane's certificate
//! before it trusts anything it says (as kubeadm's discovery hash). A token is used once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use mesh_identity::sha256;
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::store::SharedStore;

pub const TOKENS: &str = "/mesh/tokens/";
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

const ID_LEN: usize = 12;
const SECRET_LEN: usize = 32;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenRecord {
    node: String,
    secret_sha256: String,
    /// Unix seconds.
    expires_at: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(len: usize) -> String {
    let mut out = String::with_capacity(len);
    while out.len() < len {
        out.push_str(&format!("{:032x}", rand::random::<u128>()));
    }
    out.truncate(len);
    out
}

/// Creates a token for `node`, valid for `ttl`, pinning `root_der`. Also removes expired
/// tokens. Returns the token and its expiry (Unix seconds).
pub async fn create(
    store: &SharedStore,
    node: &str,
    ttl: Duration,
    root_der: &[u8],
) -> Result<(String, u64), Status> {
    check_node_name(node)?;
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(Status::invalid_argument(format!(
            "a join token lives 1 s to {} h, not {} s",
            MAX_TTL.as_secs() / 3600,
            ttl.as_secs()
        )));
    }
    sweep(store).await;
    let id = random_hex(ID_LEN);
    let secret = random_hex(SECRET_LEN);
    let expires_at = now() + ttl.as_secs();
    let record = TokenRecord {
        node: node.to_owned(),
        secret_sha256: hex(&sha256(secret.as_bytes())),
        expires_at,
    };
    let json = serde_json::to_vec(&record).map_err(|e| Status::internal(e.to_string()))?;
    store
        .put(&format!("{TOKENS}{id}"), json)
        .await
        .map_err(|e| Status::unavailable(format!("store: {e}")))?;
    let pin = hex(&sha256(root_der));
    Ok((format!("{id}.{secret}.{pin}"), expires_at))
}

/// A node name as the mesh uses it in SPIFFE IDs and `spec.node`.
pub fn check_node_name(node: &str) -> Result<(), Status> {
    let ok = !node.is_empty()
        && node.len() <= 253
        && node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && node != "."
        && node != "..";
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{node:?} is not a valid node name (letters, digits, '-', '.', '_')"
        )))
    }
}

/// Checks `token` for `node` and consumes it. Errors say why, without telling a guesser
/// whether an id exists.
pub async fn redeem(store: &SharedStore, token: &str, node: &str) -> Result<(), Status> {
    let refused = || {
        Status::unauthenticated(
            "join token not recognised (wrong, already used, or expired): create a new one \
             with `meshctl token create --node NAME`",
        )
    };
    let mut parts = token.trim().split('.');
    let (Some(id), Some(secret), Some(_pin), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Status::invalid_argument(
            "malformed join token: expected <id>.<secret>.<ca-hash> as printed by `meshctl token create`",
        ));
    };
    if id.len() != ID_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(refused());
    }
    let key = format!("{TOKENS}{id}");
    let stored = store
        .get(&key)
        .await
        .map_err(|e| Status::unavailable(format!("store: {e}")))?
        .ok_or_else(refused)?;
    let record: TokenRecord = serde_json::from_slice(&stored.value).map_err(|_| refused())?;
    let presented = hex(&sha256(secret.as_bytes()));
    if !constant_time_eq(presented.as_bytes(), record.secret_sha256.as_bytes()) {
        return Err(refused());
    }
    if record.expires_at <= now() {
        let _ = store.delete(&key).await;
        return Err(Status::unauthenticated(format!(
            "join token expired {} s ago: create a new one with `meshctl token create --node {}`",
            now() - record.expires_at,
            record.node
        )));
    }
    if record.node != node {
        return Err(Status::permission_denied(format!(
            "this join token is for node {:?}, not {node:?}",
            record.node
        )));
    }
    // Single use: whoever deletes it first joins.
    match store.delete(&key).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(refused()),
        Err(e) => Err(Status::unavailable(format!("store: {e}"))),
    }
}

/// Deletes expired tokens (best effort).
async fn sweep(store: &SharedStore) {
    let Ok((entries, _)) = store.list(TOKENS).await else {
        return;
    };
    let now = now();
    for kv in entries {
        let expired = serde_json::from_slice::<TokenRecord>(&kv.value)
            .map(|r| r.expires_at <= now)
            .unwrap_or(true);
        if expired {
            let _ = store.delete(&kv.key).await;
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses a `--ttl` like `90s`, `10m`, `1h`, `2d` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a duration (e.g. 90s, 10m, 1h, 2d)"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => anyhow::bail!("{text:?}: unknown unit {unit:?} (use s, m, h or d)"),
    };
    Ok(Duration::from_secs(n.saturating_mul(scale)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;
    use std::sync::Arc;

    fn store() -> (tempfile::TempDir, SharedStore) {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
        (dir, store)
    }

    #[tokio::test]
    async fn a_token_joins_its_node_once() {
        let (_dir, store) = store();
        let (token, _) = create(&store, "node-1", DEFAULT_TTL, b"root")
            .await
            .unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2], hex(&sha256(b"root")));
        // Only the hash of the secret is stored.
        let (stored, _) = store.list(TOKENS).await.unwrap();
        assert!(!String::from_utf8_lossy(&stored[0].value).contains(parts[1]));

        let e = redeem(&store, &token, "node-2").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("\"node-1\""), "{}", e.message());
        let wrong_secret = format!("{}.{}.{}", parts[0], "0".repeat(32), parts[2]);
        let e = redeem(&store, &wrong_secret, "node-1").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        redeem(&store, &token, "node-1").await.unwrap();
        let e = redeem(&store, &token, "node-1").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let e = redeem(&store, "garbage", "node-1").await.unwrap_err();
        assert!(
            e.message().contains("malformed join token"),
            "{}",
            e.message()
        );
    }

    #[tokio::test]
    async fn expired_tokens_are_refused() {
        let (_dir, store) = store();
        let (token, _) = create(&store, "n", Duration::from_secs(1), b"r")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let e = redeem(&store, &token, "n").await.unwrap_err();
        assert!(e.message().contains("expired"), "{}", e.message());
    }

    #[tokio::test]
    async fn bad_requests_are_refused() {
        let (_dir, store) = store();
        assert!(create(&store, "a/b", DEFAULT_TTL, b"r").await.is_err());
        assert!(create(&store, "n", Duration::ZERO, b"r").await.is_err());
        assert!(create(&store, "n", MAX_TTL * 2, b"r").await.is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172800));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }
}
