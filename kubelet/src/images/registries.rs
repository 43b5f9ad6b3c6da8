//! Registry configuration in k3s's `registries.yaml` format (mirrors with fallback, per-registry
//! TLS and credentials), rendered for the node's containerd 1.6.
//!
//! containerd 1.6.20's CRI plugin offers two ways: the old `registry.mirrors` / `registry.configs`
//! tables in config.toml (deprecated since 1.5) and `registry.config_path`, a directory of
//! `<host>/hosts.toml` files. Lotse uses `config_path`: it is the maintained format, carries
//! mirrors, the fallback to the registry itself (`server`), CA / client certificate /
//! `skip_verify` per endpoint, and is what containerd 1.7+ and 2.x keep. hosts.toml has no
//! credentials, and containerd 1.6 refuses `configs.*.tls` and `mirrors` next to `config_path` but
//! still reads `registry.configs."<host>".auth` — so credentials go there (config.toml), keyed by
//! the endpoint host containerd is talking to. Rewrites (a k3s extension of containerd) are not in
//! stock containerd 1.6: they are reported and ignored.
use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// `registries.yaml`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Registries {
    /// Registry host (`docker.io`, `*` for every registry) → its mirrors.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    /// Registry or endpoint host (`host[:port]`) → TLS and credentials.
    #[serde(default)]
    pub configs: BTreeMap<String, RegistryConfig>,
}

/// Mirrors of one registry.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Mirror {
    /// Endpoints tried in order (`https://host:port`, `http://…`); the registry itself is tried
    /// last.
    #[serde(default)]
    pub endpoint: Vec<String>,
    /// Repository rewrites (regex → replacement); not supported by containerd 1.6.
    #[serde(default)]
    pub rewrite: BTreeMap<String, String>,
}

/// TLS and credentials of one host.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RegistryConfig {
    /// Credentials.
    pub auth: Option<Auth>,
    /// TLS.
    pub tls: Option<Tls>,
}

/// Registry credentials.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Auth {
    /// User name.
    #[serde(default)]
    pub username: String,
    /// Password.
    #[serde(default)]
    pub password: String,
    /// `base64(user:password)`.
    #[serde(default)]
    pub auth: String,
    /// OAuth identity token.
    #[serde(default, alias = "identitytoken")]
    pub identity_token: String,
}

/// TLS settings of one endpoint.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Tls {
    /// CA bundle that signs the endpoint's certificate.
    #[serde(default)]
    pub ca_file: String,
    /// Client certificate.
    #[serde(default)]
    pub cert_file: String,
    /// Client key.
    #[serde(default)]
    pub key_file: String,
    /// Skip verifying the endpoint's certificate.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// What the kubelet writes for containerd.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    /// Directory name under `config_path` → `hosts.toml` content.
    pub hosts: BTreeMap<String, String>,
    /// config.toml tables with the credentials (`registry.configs."host".auth`).
    pub auth_toml: String,
    /// What was ignored, for the log.
    pub warnings: Vec<String>,
}

/// Reads and parses `registries.yaml`.
pub fn load(path: &Path) -> Result<Registries, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if text.trim().is_empty() {
        return Ok(Registries::default());
    }
    serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A TOML basic string (JSON's string escapes are a subset TOML accepts).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `scheme://host[:port][/path]` of an endpoint; a bare host gets `https://`.
fn endpoint_url(e: &str) -> String {
    let e = e.trim().trim_end_matches('/');
    if e.starts_with("http://") || e.starts_with("https://") {
        e.to_string()
    } else {
        format!("https://{e}")
    }
}

/// The host[:port] of an endpoint URL.
fn url_host(u: &str) -> &str {
    let rest = u.split_once("://").map(|(_, r)| r).unwrap_or(u);
    rest.split('/').next().unwrap_or(rest)
}

/// The registry's own endpoint (containerd's default for the host).
fn default_server(registry: &str) -> String {
    if registry == "docker.io" {
        "https://registry-1.docker.io".into()
    } else {
        format!("https://{registry}")
    }
}

fn tls_lines(tls: Option<&Tls>, indent: &str) -> String {
    let mut out = String::new();
    if let Some(t) = tls {
        if !t.ca_file.is_empty() {
            out += &format!("{indent}ca = {}\n", q(&t.ca_file));
        }
        if !t.cert_file.is_empty() {
            if t.key_file.is_empty() {
                out += &format!("{indent}client = {}\n", q(&t.cert_file));
            } else {
                out += &format!(
                    "{indent}client = [[{}, {}]]\n",
                    q(&t.cert_file),
                    q(&t.key_file)
                );
            }
        }
        if t.insecure_skip_verify {
            out += &format!("{indent}skip_verify = true\n");
        }
    }
    out
}

/// Renders `registries.yaml` into hosts.toml files and the credential tables.
pub fn render(r: &Registries) -> Rendered {
    let mut out = Rendered::default();
    let tls_of = |host: &str| r.configs.get(host).and_then(|c| c.tls.as_ref());
    for (registry, m) in &r.mirrors {
        if !m.rewrite.is_empty() {
            out.warnings.push(format!(
                "registries.yaml: mirrors.{registry}.rewrite is ignored (containerd 1.6 has no repository rewrites)"
            ));
        }
        let dir = if registry == "*" {
            "_default".to_string()
        } else {
            registry.clone()
        };
        let mut text = String::new();
        if registry != "*" {
            text += &format!("server = {}\n", q(&default_server(registry)));
            text += &tls_lines(tls_of(registry), "");
        }
        if m.endpoint.is_empty() {
            if registry == "*" {
                continue;
            }
            // No mirror: the registry alone (containerd 1.6 needs a `host` table).
            let server = default_server(registry);
            text += &format!("\n[host.{}]\n", q(&server));
            text += "  capabilities = [\"pull\", \"resolve\"]\n";
            text += &tls_lines(tls_of(registry), "  ");
        }
        for e in &m.endpoint {
            let url = endpoint_url(e);
            let (base, path) = match url.split_once("://") {
                Some((scheme, rest)) => match rest.split_once('/') {
                    Some((h, p)) => (format!("{scheme}://{h}"), format!("/{p}")),
                    None => (url.clone(), String::new()),
                },
                None => (url.clone(), String::new()),
            };
            let host_url = format!("{base}{path}");
            text += &format!("\n[host.{}]\n", q(&host_url));
            text += "  capabilities = [\"pull\", \"resolve\"]\n";
            if path.ends_with("/v2") {
                text += "  override_path = true\n";
            }
            text += &tls_lines(tls_of(url_host(&base)), "  ");
        }
        out.hosts.insert(dir, text);
    }
    // Registries pulled directly (no mirror) that need TLS settings.
    for (host, c) in &r.configs {
        if out.hosts.contains_key(host) || c.tls.is_none() {
            continue;
        }
        // containerd 1.6 refuses a hosts.toml without a `host` table ("invalid `host` tree"), so
        // the registry is listed as its own host too, with the same TLS settings.
        let server = default_server(host);
        let mut text = format!("server = {}\n", q(&server));
        text += &tls_lines(c.tls.as_ref(), "");
        text += &format!("\n[host.{}]\n", q(&server));
        text += "  capabilities = [\"pull\", \"resolve\"]\n";
        text += &tls_lines(c.tls.as_ref(), "  ");
        out.hosts.insert(host.clone(), text);
    }
    for (host, c) in &r.configs {
        let Some(a) = &c.auth else { continue };
        out.auth_toml += &format!(
            "\n[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.{}.auth]\n",
            q(host)
        );
        for (k, v) in [
            ("username", &a.username),
            ("password", &a.password),
            ("auth", &a.auth),
            ("identitytoken", &a.identity_token),
        ] {
            if !v.is_empty() {
                out.auth_toml += &format!("  {k} = {}\n", q(v));
            }
        }
    }
    out
}

/// Replaces the contents of `certs_dir` with the rendered hosts.toml files.
pub fn write_hosts(rendered: &Rendered, certs_dir: &Path) -> std::io::Result<()> {
    if certs_dir.exists() {
        std::fs::remove_dir_all(certs_dir)?;
    }
    std::fs::create_dir_all(certs_dir)?;
    for (dir, text) in &rendered.hosts {
        let d = certs_dir.join(dir);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("hosts.toml"), text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
mirrors:
  docker.io:
    endpoint:
      - "https://127.0.0.1:5443"
      - "http://127.0.0.1:5000/v2"
    rewrite:
      "^library/(.*)": "mirror/$1"
configs:
  "127.0.0.1:5443":
    auth:
      username: bob
      password: "p\"w"
    tls:
      ca_file: /etc/lotse/ca.pem
      cert_file: /etc/lotse/client.pem
      key_file: /etc/lotse/client-key.pem
  "registry.internal:8443":
    tls:
      insecure_skip_verify: true
    auth:
      identity_token: tok
"#;

    #[test]
    fn mirrors_tls_and_auth_render_for_containerd() {
        let r: Registries = serde_yaml::from_str(YAML).unwrap_or_else(|e| panic!("{e}"));
        let out = render(&r);
        let hub = &out.hosts["docker.io"];
        assert!(
            hub.starts_with("server = \"https://registry-1.docker.io\"\n"),
            "{hub}"
        );
        let first = hub
            .find("[host.\"https://127.0.0.1:5443\"]")
            .unwrap_or(usize::MAX);
        let second = hub.find("[host.\"http://127.0.0.1:5000/v2\"]").unwrap_or(0);
        assert!(first < second, "endpoints in order: {hub}");
        assert!(hub.contains("  ca = \"/etc/lotse/ca.pem\"\n"));
        assert!(
            hub.contains(
                "  client = [[\"/etc/lotse/client.pem\", \"/etc/lotse/client-key.pem\"]]\n"
            )
        );
        assert!(hub.contains("  override_path = true\n"));
        let direct = &out.hosts["registry.internal:8443"];
        assert_eq!(
            direct,
            "server = \"https://registry.internal:8443\"\nskip_verify = true\n\n[host.\"https://registry.internal:8443\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"
        );
        assert!(out.auth_toml.contains(
            "[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"127.0.0.1:5443\".auth]\n  username = \"bob\"\n  password = \"p\\\"w\"\n"
        ), "{}", out.auth_toml);
        assert!(out.auth_toml.contains("identitytoken = \"tok\""));
        assert_eq!(out.warnings.len(), 1, "rewrite reported");
    }

    #[test]
    fn empty_and_broken_files() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("registries.yaml");
        std::fs::write(&p, "").unwrap_or_else(|e| panic!("{e}"));
        assert!(load(&p).map(|r| r.mirrors.is_empty()).unwrap_or(false));
        std::fs::write(&p, "mirrors: [1, 2").unwrap_or_else(|e| panic!("{e}"));
        assert!(load(&p).is_err());
        assert!(load(&dir.path().join("nope.yaml")).is_err());
        let r: Registries =
            serde_yaml::from_str("mirrors:\n  \"*\":\n    endpoint: [\"mirror.local:5000\"]\n")
                .unwrap_or_else(|e| panic!("{e}"));
        let out = render(&r);
        assert_eq!(
            out.hosts["_default"],
            "\n[host.\"https://mirror.local:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        );
        let certs = dir.path().join("certs.d");
        write_hosts(&out, &certs).unwrap_or_else(|e| panic!("{e}"));
        assert!(certs.join("_default/hosts.toml").is_file());
    }
}
