//! Registry credentials from a pod's `imagePullSecrets`, matched to an image the way Kubernetes'
//! credential keyring (`pkg/credentialprovider`) matches them: a key is `host[:port][/path]`
//! (a URL scheme is ignored), `*` globs one host label, the port must be equal, and the key's path
//! must be a prefix of the image's repository. Every matching credential is returned (keys in
//! reverse lexical order, as Kubernetes' index); the puller tries them in turn.
use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;

use super::ImageRef;

/// One registry credential, as CRI's `AuthConfig` carries it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credential {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
    /// `base64(username:password)` when the secret gave only that.
    pub auth: String,
    /// The key the credential was found under (not sent to containerd).
    pub server_address: String,
    /// OAuth identity token.
    pub identity_token: String,
    /// Bearer token for the registry.
    pub registry_token: String,
}

impl Credential {
    /// The CRI form.
    pub fn to_cri(&self) -> k8s_cri::v1::AuthConfig {
        k8s_cri::v1::AuthConfig {
            username: self.username.clone(),
            password: self.password.clone(),
            auth: self.auth.clone(),
            // Left empty: containerd 1.6 drops credentials whose server address is not the host
            // it talks to (a mirror is another host) and cannot parse a bare `host:port`; the
            // keyring has already matched the image's registry.
            server_address: String::new(),
            identity_token: self.identity_token.clone(),
            registry_token: self.registry_token.clone(),
        }
    }
}

/// One entry of a `.dockerconfigjson` `auths` map or of a `.dockercfg`.
#[derive(Deserialize, Default)]
struct DockerConfigEntry {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    auth: String,
    #[serde(default, rename = "identitytoken")]
    identity_token: String,
    #[serde(default, rename = "registrytoken")]
    registry_token: String,
}

#[derive(Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, DockerConfigEntry>,
}

/// A parsed registry key.
#[derive(Clone, Debug)]
struct Key {
    host: String,
    port: Option<String>,
    path: String,
    original: String,
}

/// Credentials keyed by registry, from pull secrets.
#[derive(Default, Debug)]
pub struct Keyring {
    entries: Vec<(Key, Credential)>,
}

/// Docker Hub's historic names all mean `docker.io` (Kubernetes' keyring treats
/// `index.docker.io/v1/` keys the same way).
fn canonical_host(h: &str) -> String {
    let h = h.to_ascii_lowercase();
    match h.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => h,
    }
}

fn parse_key(raw: &str) -> Option<Key> {
    let s = raw
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let (hostport, path) = match s.split_once('/') {
        Some((h, p)) => (h, p.trim_end_matches('/')),
        None => (s, ""),
    };
    if hostport.is_empty() {
        return None;
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty() => {
            (h, Some(p.to_string()))
        }
        _ => (hostport, None),
    };
    let host = canonical_host(host);
    // Docker Hub's legacy key `index.docker.io/v1/` names the whole registry, not a path.
    let path = if host == "docker.io" && path == "v1" {
        ""
    } else {
        path
    };
    Some(Key {
        host,
        port,
        path: path.to_string(),
        original: raw.to_string(),
    })
}

/// `pattern` (may hold `*`, `?`) matches `label` as `filepath.Match` does for one host label.
fn glob(pattern: &str, label: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), label.as_bytes())
}

impl Key {
    fn matches(&self, host: &str, port: Option<&str>, repository: &str) -> bool {
        let kl: Vec<&str> = self.host.split('.').collect();
        let hl: Vec<&str> = host.split('.').collect();
        if kl.len() != hl.len() || !kl.iter().zip(&hl).all(|(k, h)| glob(k, h)) {
            return false;
        }
        if self.port.as_deref() != port {
            return false;
        }
        repository.starts_with(&self.path)
    }
}

impl Keyring {
    /// The credentials of `kubernetes.io/dockerconfigjson` (`.dockerconfigjson`) and
    /// `kubernetes.io/dockercfg` (`.dockercfg`) secrets; secrets of other types or that do not
    /// parse are named in the returned warnings and skipped.
    pub fn from_secrets(secrets: &[Secret]) -> (Keyring, Vec<String>) {
        let mut ring = Keyring::default();
        let mut warnings = Vec::new();
        for s in secrets {
            let name = s.metadata.name.clone().unwrap_or_default();
            let data = s.data.clone().unwrap_or_default();
            let parsed: Result<std::collections::BTreeMap<String, DockerConfigEntry>, String> =
                match s.type_.as_deref() {
                    Some("kubernetes.io/dockerconfigjson") => data
                        .get(".dockerconfigjson")
                        .ok_or_else(|| "no .dockerconfigjson key".to_string())
                        .and_then(|b| {
                            serde_json::from_slice::<DockerConfigJson>(&b.0)
                                .map(|c| c.auths)
                                .map_err(|e| e.to_string())
                        }),
                    Some("kubernetes.io/dockercfg") => data
                        .get(".dockercfg")
                        .ok_or_else(|| "no .dockercfg key".to_string())
                        .and_then(|b| serde_json::from_slice(&b.0).map_err(|e| e.to_string())),
                    other => Err(format!(
                        "type {:?} is not kubernetes.io/dockerconfigjson or kubernetes.io/dockercfg",
                        other.unwrap_or("")
                    )),
                };
            match parsed {
                Ok(auths) => {
                    for (k, e) in auths {
                        ring.add(&k, e);
                    }
                }
                Err(e) => warnings.push(format!("pull secret {name}: {e}")),
            }
        }
        ring.sort();
        (ring, warnings)
    }

    fn add(&mut self, key: &str, e: DockerConfigEntry) {
        let Some(k) = parse_key(key) else { return };
        let (mut username, mut password) = (e.username, e.password);
        if username.is_empty()
            && password.is_empty()
            && !e.auth.is_empty()
            && let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(e.auth.trim())
            && let Some((u, p)) = String::from_utf8_lossy(&raw).split_once(':')
        {
            username = u.to_string();
            password = p.to_string();
        }
        let cred = Credential {
            username,
            password,
            auth: e.auth,
            server_address: k.original.clone(),
            identity_token: e.identity_token,
            registry_token: e.registry_token,
        };
        self.entries.push((k, cred));
    }

    /// Reverse lexical order of the keys, as Kubernetes orders its index (a longer key with the
    /// same prefix comes first).
    fn sort(&mut self) {
        self.entries.sort_by(|a, b| {
            let ka = format!("{}{}", a.0.host, a.0.path);
            let kb = format!("{}{}", b.0.host, b.0.path);
            kb.cmp(&ka)
        });
    }

    /// Every credential whose key matches `image`, in the index order.
    pub fn lookup(&self, image: &ImageRef) -> Vec<Credential> {
        let (host, port) = match image.registry.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => (h, Some(p)),
            _ => (image.registry.as_str(), None),
        };
        let host = canonical_host(host);
        let mut out: Vec<Credential> = Vec::new();
        for (k, c) in &self.entries {
            if k.matches(&host, port, &image.repository) && !out.contains(c) {
                out.push(c.clone());
            }
        }
        out
    }

    /// Whether no credential was found in the secrets.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(name: &str, type_: &str, key: &str, json: serde_json::Value) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            type_: Some(type_.into()),
            data: Some(
                [(
                    key.to_string(),
                    ByteString(serde_json::to_vec(&json).unwrap_or_default()),
                )]
                .into(),
            ),
            ..Default::default()
        }
    }

    fn img(s: &str) -> ImageRef {
        super::super::parse_image(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn dockerconfigjson_and_dockercfg_match_by_host_port_and_path() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("bob:secret");
        let (ring, warnings) = Keyring::from_secrets(&[
            secret(
                "a",
                "kubernetes.io/dockerconfigjson",
                ".dockerconfigjson",
                serde_json::json!({"auths": {
                    "https://index.docker.io/v1/": {"username": "hub", "password": "p1"},
                    "127.0.0.1:5000": {"auth": b64},
                    "*.example.com/team": {"username": "team", "password": "p2"},
                }}),
            ),
            secret(
                "b",
                "kubernetes.io/dockercfg",
                ".dockercfg",
                serde_json::json!({"registry.example.com": {"username": "any", "password": "p3"}}),
            ),
            secret("c", "Opaque", "x", serde_json::json!({})),
        ]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("pull secret c"));

        let hub = ring.lookup(&img("nginx:1.25"));
        assert_eq!(hub.len(), 1);
        assert_eq!(hub[0].username, "hub");

        let local = ring.lookup(&img("127.0.0.1:5000/busybox:1"));
        assert_eq!(local.len(), 1);
        assert_eq!(
            (local[0].username.as_str(), local[0].password.as_str()),
            ("bob", "secret")
        );
        // Another port is another registry.
        assert!(ring.lookup(&img("127.0.0.1:5001/busybox:1")).is_empty());

        // Both match; keys in reverse lexical order, as Kubernetes' keyring index.
        let team = ring.lookup(&img("registry.example.com/team/app:v1"));
        assert_eq!(
            team.iter().map(|c| c.username.as_str()).collect::<Vec<_>>(),
            ["any", "team"]
        );
        let other = ring.lookup(&img("registry.example.com/other/app:v1"));
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].username, "any");
        // `*` matches one label only.
        assert!(ring.lookup(&img("a.b.example.com/team/app")).is_empty());
    }

    #[test]
    fn broken_secrets_are_reported_not_fatal() {
        let mut s = secret(
            "bad",
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
            serde_json::json!({}),
        );
        s.data = Some([(".dockerconfigjson".to_string(), ByteString(b"{".to_vec()))].into());
        let (ring, w) = Keyring::from_secrets(&[s]);
        assert!(ring.is_empty());
        assert!(w[0].starts_with("pull secret bad:"), "{w:?}");
    }
}
