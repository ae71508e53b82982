//! What the runtime passes in the environment: the command, the pod's network namespace and,
//! in `CNI_ARGS`, who the pod is (Kubernetes runtimes set `K8S_POD_NAMESPACE`, `K8S_POD_NAME`
//! and `K8S_POD_UID` there).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::spec::{CniError, Code};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(value: Option<&str>) -> Result<Command, CniError> {
        Ok(match value {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some(other) => {
                return Err(bad_env(format!(
                    "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"
                )))
            }
            None => return Err(bad_env("CNI_COMMAND is not set")),
        })
    }
}

/// The pod, as named by `CNI_ARGS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    /// The Kubernetes pod uid: the declared Workload's `uid`, and the key the agent enrolls
    /// the pod under.
    pub uid: String,
}

impl PodIdentity {
    /// Reads the pod from `CNI_ARGS` (`K=V` pairs separated by `;`). Keys other than the three
    /// we need are ignored (runtimes also pass `IgnoreUnknown`, `K8S_POD_INFRA_CONTAINER_ID`).
    pub fn from_cni_args(cni_args: Option<&str>) -> Result<PodIdentity, CniError> {
        let Some(cni_args) = cni_args.filter(|a| !a.is_empty()) else {
            return Err(bad_env(
                "CNI_ARGS is not set: mesh-cni needs K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID in it",
            ));
        };
        let args = parse_pairs(cni_args)?;
        let get = |key: &str| -> Result<String, CniError> {
            let value = args.get(key).ok_or_else(|| {
                bad_env(format!(
                    "CNI_ARGS has no {key} (the runtime must name the pod)"
                ))
            })?;
            check_value(key, value)?;
            Ok(value.clone())
        };
        Ok(PodIdentity {
            namespace: get("K8S_POD_NAMESPACE")?,
            name: get("K8S_POD_NAME")?,
            uid: get("K8S_POD_UID")?,
        })
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

fn parse_pairs(cni_args: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut pairs = BTreeMap::new();
    for pair in cni_args.split(';').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(bad_env(format!("CNI_ARGS entry {pair:?} is not KEY=VALUE")));
        };
        if pairs.insert(key.to_string(), value.to_string()).is_some() {
            return Err(bad_env(format!("CNI_ARGS names {key} twice")));
        }
    }
    Ok(pairs)
}

/// Kubernetes names and uids are DNS labels/subdomains and UUIDs; anything else did not come
/// from a runtime. The uid also goes into a URL path of the agent's API, so it must not carry
/// `/`, `?` or `%`.
fn check_value(key: &str, value: &str) -> Result<(), CniError> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_';
    if value.is_empty() || value.len() > 253 || !value.bytes().all(allowed) {
        return Err(bad_env(format!(
            "CNI_ARGS {key}={value:?} is not a Kubernetes name or uid (1-253 letters, digits, '-', '.', '_')"
        )));
    }
    Ok(())
}

/// `CNI_NETNS`, which must be a network namespace that exists: the agent opens it to serve
/// the pod, and a path naming nothing would only fail there, later and less clearly.
pub fn netns(value: Option<&str>) -> Result<PathBuf, CniError> {
    let Some(path) = value.filter(|v| !v.is_empty()) else {
        return Err(bad_env("CNI_NETNS is not set"));
    };
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(bad_env(format!(
            "CNI_NETNS {} is not an absolute path",
            path.display()
        )));
    }
    match filesystem_magic(path) {
        Ok(NSFS_MAGIC) => Ok(path.to_path_buf()),
        Ok(_) => Err(bad_env(format!(
            "CNI_NETNS {} is not a network namespace (not an nsfs file)",
            path.display()
        ))),
        Err(e) => Err(bad_env(format!(
            "CNI_NETNS {}: no such network namespace ({e})",
            path.display()
        ))),
    }
}

/// `NSFS_MAGIC` from linux/magic.h: the filesystem of /proc/<pid>/ns/* and their bind mounts.
const NSFS_MAGIC: i64 = 0x6e73_6673;

fn filesystem_magic(path: &Path) -> std::io::Result<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: a NUL-terminated path and a buffer of the right type, written by the kernel.
    if unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statfs returned 0, so it filled the buffer.
    let f_type = unsafe { stat.assume_init() }.f_type;
    // i64 on x86_64, narrower on some other targets.
    #[allow(clippy::unnecessary_cast)]
    Ok(f_type as i64)
}

fn bad_env(msg: impl Into<String>) -> CniError {
    CniError::new(Code::InvalidEnvironment, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K8S: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-7f9c;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=4c1e2f6a-0b7d-4e2a-9c3f-8d5e6f7a8b9c";

    #[test]
    fn reads_the_pod_from_kubernetes_cni_args() {
        let pod = PodIdentity::from_cni_args(Some(K8S)).unwrap();
        assert_eq!(pod.key(), "shop/web-7f9c");
        assert_eq!(pod.uid, "4c1e2f6a-0b7d-4e2a-9c3f-8d5e6f7a8b9c");
    }

    fn message(args: Option<&str>) -> String {
        let e = PodIdentity::from_cni_args(args).unwrap_err();
        assert_eq!(e.code, Code::InvalidEnvironment);
        assert!(
            e.msg.contains("CNI_ARGS"),
            "the variable is named: {}",
            e.msg
        );
        e.msg
    }

    #[test]
    fn missing_or_malformed_cni_args_name_what_is_wrong() {
        assert!(message(None).contains("not set"));
        assert!(message(Some("")).contains("not set"));
        assert!(message(Some("K8S_POD_NAME=a;K8S_POD_UID=u")).contains("K8S_POD_NAMESPACE"));
        assert!(message(Some("K8S_POD_NAMESPACE=a;K8S_POD_NAME")).contains("\"K8S_POD_NAME\""));
        assert!(message(Some("K8S_POD_NAME=a;K8S_POD_NAME=b")).contains("twice"));
        let traversal = K8S.replace("K8S_POD_UID=", "K8S_POD_UID=../x");
        assert!(message(Some(&traversal)).contains("K8S_POD_UID=\"../x4c1e"));
        let empty = K8S.replace("K8S_POD_NAME=web-7f9c", "K8S_POD_NAME=");
        assert!(message(Some(&empty)).contains("K8S_POD_NAME=\"\""));
    }

    #[test]
    fn commands() {
        assert_eq!(Command::parse(Some("ADD")).unwrap(), Command::Add);
        assert_eq!(Command::parse(Some("GC")).unwrap(), Command::Gc);
        let e = Command::parse(Some("add")).unwrap_err();
        assert!(e.msg.contains("CNI_COMMAND \"add\""), "{}", e.msg);
        assert!(Command::parse(None)
            .unwrap_err()
            .msg
            .contains("CNI_COMMAND"));
    }

    #[test]
    fn netns_must_be_a_network_namespace() {
        assert_eq!(
            netns(Some("/proc/self/ns/net")).unwrap(),
            PathBuf::from("/proc/self/ns/net")
        );
        let e = netns(Some("/run/netns/does-not-exist-mesh-cni")).unwrap_err();
        assert_eq!(e.code, Code::InvalidEnvironment);
        assert!(e.msg.contains("no such network namespace"), "{}", e.msg);
        assert!(netns(Some("/etc/hostname"))
            .unwrap_err()
            .msg
            .contains("not a network namespace"));
        assert!(netns(Some("relative"))
            .unwrap_err()
            .msg
            .contains("absolute"));
        assert!(netns(None)
            .unwrap_err()
            .msg
            .contains("CNI_NETNS is not set"));
    }
}
