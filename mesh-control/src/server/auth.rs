//! Admin authentication: a bearer token created at first start and kept in the store, so every
//! replica accepts the same one. `meshctl` reads it from `admin.token` in the data dir.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use tonic::{Request, Status};

use crate::keys;
use crate::store::SharedStore;

/// The admin token: the one in the store, or a new one if this is the first start.
pub async fn admin_token(store: &SharedStore) -> Result<String> {
    let fresh = format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );
    store
        .create(keys::ADMIN_TOKEN, fresh.into_bytes())
        .await
        .context("creating the admin token")?;
    let stored = store
        .get(keys::ADMIN_TOKEN)
        .await
        .context("reading the admin token")?
        .context("the admin token vanished from the store")?;
    String::from_utf8(stored.value).context("the stored admin token is not text")
}

/// Writes the token for operators: `<data-dir>/admin.token`, mode 0600.
pub fn write_token_file(path: &Path, token: &str) -> Result<()> {
    use std::io::Write;
    let _ = std::fs::remove_file(path); // recreate with the right mode whatever was there
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(token.as_bytes())?;
    file.write_all(b"\n")?;
    Ok(())
}

/// Rejects admin calls without `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct TokenCheck {
    pub token: String,
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("missing admin token (authorization: Bearer ...)")
            })?;
        if !constant_time_eq(presented.trim().as_bytes(), self.token.as_bytes()) {
            return Err(Status::unauthenticated("wrong admin token"));
        }
        Ok(request)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn request(header: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(h) = header {
            r.metadata_mut().insert("authorization", h.parse().unwrap());
        }
        r
    }

    #[test]
    fn only_the_right_token_passes() {
        let mut check = TokenCheck {
            token: "s3cret".into(),
        };
        assert!(check.call(request(Some("Bearer s3cret"))).is_ok());
        assert_eq!(
            check
                .call(request(Some("Bearer nope")))
                .unwrap_err()
                .message(),
            "wrong admin token"
        );
        assert!(check.call(request(Some("s3cret"))).is_err());
        assert!(check.call(request(None)).is_err());
    }
}
