//! What a container runtime does with CNI, done the same way: read the node's first network
//! config list from the conf dir, find each plugin's binary on `CNI_PATH`, and run the plugins
//! in order (DEL in reverse), each with the environment and its own config on stdin, the
//! previous plugin's result inserted as `prevResult`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// The reference plugins from Debian's containernetworking-plugins.
pub const SYSTEM_PLUGINS: &str = "/usr/lib/cni";

/// A node's CNI setup: binaries in `bin_dir` (then the system plugins), configs in `conf_dir`.
pub struct Runtime {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
}

/// What the pod passes to every plugin.
pub struct Sandbox<'a> {
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub cni_args: &'a str,
}

/// A plugin that failed: which one, and its CNI error object.
#[derive(Debug)]
pub struct PluginError {
    pub plugin: String,
    pub code: u64,
    pub msg: String,
    pub error: Value,
}

impl Runtime {
    pub fn cni_path(&self) -> String {
        format!("{}:{SYSTEM_PLUGINS}", self.bin_dir.display())
    }

    /// The network config list the runtime uses: the first `*.conflist` by name.
    pub fn conflist(&self) -> Result<Value> {
        let mut lists: Vec<PathBuf> = std::fs::read_dir(&self.conf_dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "conflist"))
            .collect();
        lists.sort();
        let first = lists.first().context("no conflist in the conf dir")?;
        Ok(serde_json::from_slice(&std::fs::read(first)?)?)
    }

    /// ADD through the chain; the last plugin's result, or the first failure. Like a runtime,
    /// a failed ADD is followed by a DEL of the whole chain (errors of that DEL are ignored).
    pub fn add(&self, sandbox: &Sandbox) -> Result<Result<Value, PluginError>> {
        let list = self.conflist()?;
        let mut prev: Option<Value> = None;
        for plugin in plugins(&list)? {
            match self.invoke("ADD", &list, plugin, prev.as_ref(), sandbox)? {
                Ok(result) => prev = Some(result),
                Err(e) => {
                    let _ = self.del(sandbox, None)?;
                    return Ok(Err(e));
                }
            }
        }
        prev.context("the conflist has no plugins").map(Ok)
    }

    /// CHECK through the chain with the cached ADD result as every plugin's `prevResult`.
    pub fn check(&self, sandbox: &Sandbox, result: &Value) -> Result<Result<(), PluginError>> {
        let list = self.conflist()?;
        for plugin in plugins(&list)? {
            if let Err(e) = self.invoke("CHECK", &list, plugin, Some(result), sandbox)? {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }

    /// DEL through the chain in reverse, every plugin run even when one fails (the first
    /// failure is returned).
    pub fn del(
        &self,
        sandbox: &Sandbox,
        result: Option<&Value>,
    ) -> Result<Result<(), PluginError>> {
        let list = self.conflist()?;
        let mut first_error = None;
        for plugin in plugins(&list)?.iter().rev() {
            if let Err(e) = self.invoke("DEL", &list, plugin, result, sandbox)? {
                first_error.get_or_insert(e);
            }
        }
        Ok(first_error.map_or(Ok(()), Err))
    }

    /// Runs one plugin: `Ok(Ok(stdout as JSON, or null when empty))` on exit 0, `Ok(Err)` with
    /// its error object otherwise.
    fn invoke(
        &self,
        command: &str,
        list: &Value,
        plugin: &Value,
        prev: Option<&Value>,
        sandbox: &Sandbox,
    ) -> Result<Result<Value, PluginError>> {
        let mut config = plugin.clone();
        config["cniVersion"] = list["cniVersion"].clone();
        config["name"] = list["name"].clone();
        if let Some(prev) = prev {
            config["prevResult"] = prev.clone();
        }
        let kind = plugin["type"].as_str().context("a plugin without type")?;
        let binary = self.find(kind)?;
        let env = [
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", sandbox.container_id.to_string()),
            ("CNI_NETNS", sandbox.netns.display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_ARGS", sandbox.cni_args.to_string()),
            ("CNI_PATH", self.cni_path()),
        ];
        let out = run_plugin(&binary, &env, &config.to_string())?;
        Ok(parse_output(kind, &out))
    }

    fn find(&self, kind: &str) -> Result<PathBuf> {
        self.cni_path()
            .split(':')
            .map(|dir| Path::new(dir).join(kind))
            .find(|p| p.is_file())
            .with_context(|| format!("plugin {kind} not found on CNI_PATH {}", self.cni_path()))
    }
}

fn plugins(list: &Value) -> Result<&Vec<Value>> {
    list["plugins"]
        .as_array()
        .context("conflist without plugins")
}

/// Runs a plugin binary with exactly `env` (nothing inherited) and `stdin`.
pub fn run_plugin(binary: &Path, env: &[(&str, String)], stdin: &str) -> Result<Output> {
    let mut child = Command::new(binary)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", binary.display()))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())?;
    Ok(child.wait_with_output()?)
}

/// A plugin's outcome from its exit status and stdout.
pub fn parse_output(plugin: &str, out: &Output) -> Result<Value, PluginError> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed: Value = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| json!({"unparsed": stdout, "error": e.to_string()}))
    };
    if out.status.success() {
        return Ok(parsed);
    }
    Err(PluginError {
        plugin: plugin.to_string(),
        code: parsed["code"].as_u64().unwrap_or(0),
        msg: parsed["msg"].as_str().unwrap_or_default().to_string(),
        error: json!({
            "stdout": parsed,
            "stderr": String::from_utf8_lossy(&out.stderr),
        }),
    })
}

/// Fails unless `outcome` is an error of `plugin` with `code`; returns its message.
pub fn expect_error<T: std::fmt::Debug>(
    outcome: Result<T, PluginError>,
    plugin: &str,
    code: u64,
) -> Result<String> {
    match outcome {
        Ok(v) => bail!("expected {plugin} to fail with code {code}, it succeeded: {v:?}"),
        Err(e) if e.plugin == plugin && e.code == code => Ok(e.msg),
        Err(e) => bail!(
            "expected {plugin} to fail with code {code}, {} failed with {}: {}",
            e.plugin,
            e.code,
            e.error
        ),
    }
}
