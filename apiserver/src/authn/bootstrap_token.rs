//! Bootstrap tokens, as Kubernetes' `plugin/pkg/auth/authenticator/token/bootstrap` and kubeadm
//! define them: a token `<id>.<secret>` (`[a-z0-9]{6}.[a-z0-9]{16}`) is a Secret
//! `kube-system/bootstrap-token-<id>` of type `bootstrap.kubernetes.io/token`. A bearer token of
//! that shape authenticates as `system:bootstrap:<id>` in `system:bootstrappers` (plus the
//! Secret's `auth-extra-groups`) while the Secret allows authentication and has not expired.
//!
//! Also the `cluster-info` ConfigMap in `kube-public` that joining nodes read anonymously (its
//! `kubeconfig` names the CA and the server; the bootstrap signer adds one JWS per signing
//! token).
//!
//! Pure rules only: the authenticator that reads the Secret is `authn`'s, the objects are
//! created by `bootstrap_rbac` at start.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

/// The namespace bootstrap-token Secrets live in.
pub const TOKEN_NAMESPACE: &str = "kube-system";
/// `type` of a bootstrap-token Secret.
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// Name prefix of bootstrap-token Secrets (`bootstrap-token-<id>`).
pub const SECRET_PREFIX: &str = "bootstrap-token-";
/// The group every bootstrap token's user is in.
pub const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers";
/// User name prefix of bootstrap tokens (`system:bootstrap:<id>`).
pub const USER_PREFIX: &str = "system:bootstrap:";
/// Secret data key: the token id.
pub const KEY_TOKEN_ID: &str = "token-id";
/// Secret data key: the token secret.
pub const KEY_TOKEN_SECRET: &str = "token-secret";
/// Secret data key: RFC 3339 expiry.
pub const KEY_EXPIRATION: &str = "expiration";
/// Secret data key: human description.
pub const KEY_DESCRIPTION: &str = "description";
/// Secret data key: extra groups (comma separated, each `system:bootstrappers:…`).
pub const KEY_EXTRA_GROUPS: &str = "auth-extra-groups";
/// Secret data key: `"true"` lets the token authenticate.
pub const KEY_USAGE_AUTHENTICATION: &str = "usage-bootstrap-authentication";
/// Secret data key: `"true"` lets the bootstrap signer sign `cluster-info` with the token.
pub const KEY_USAGE_SIGNING: &str = "usage-bootstrap-signing";
/// The ConfigMap joining nodes discover the cluster from, in `kube-public`.
pub const CLUSTER_INFO: &str = "cluster-info";
/// The public namespace.
pub const PUBLIC_NAMESPACE: &str = "kube-public";
/// Key of `cluster-info` holding the kubeconfig with the CA and the server URL.
pub const KUBECONFIG_KEY: &str = "kubeconfig";
/// Prefix of `cluster-info` keys holding detached JWS signatures (`jws-kubeconfig-<id>`).
pub const JWS_PREFIX: &str = "jws-kubeconfig-";
/// The group kubeadm puts its default tokens in (may join nodes).
pub const KUBEADM_DEFAULT_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";

const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A bootstrap token `<id>.<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    /// The public part, `[a-z0-9]{6}`.
    pub id: String,
    /// The secret part, `[a-z0-9]{16}`.
    pub secret: String,
}

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

fn in_alphabet(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b))
}

impl BootstrapToken {
    /// Parses `<id>.<secret>`; None when the string does not have that shape.
    pub fn parse(token: &str) -> Option<BootstrapToken> {
        let (id, secret) = token.split_once('.')?;
        (in_alphabet(id, ID_LEN) && in_alphabet(secret, SECRET_LEN)).then(|| BootstrapToken {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// A new random token (uniform over the alphabet, as kubeadm's `GenerateBootstrapToken`).
    pub fn generate() -> BootstrapToken {
        use rand::Rng;
        let mut rng = rand::rng();
        let mut pick = |n: usize| -> String {
            (0..n)
                .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
                .collect()
        };
        BootstrapToken {
            id: pick(ID_LEN),
            secret: pick(SECRET_LEN),
        }
    }

    /// The name of the token's Secret in `kube-system`.
    pub fn secret_name(&self) -> String {
        format!("{SECRET_PREFIX}{}", self.id)
    }

    /// The Secret kubeadm creates for this token: usable for authentication and signing, in
    /// kubeadm's default group, expiring at `expiration` (RFC 3339) when given.
    pub fn secret(&self, expiration: Option<&str>, description: &str) -> Value {
        let mut data = serde_json::Map::new();
        let mut put = |k: &str, v: &str| {
            data.insert(k.to_string(), Value::String(BASE64.encode(v)));
        };
        put(KEY_TOKEN_ID, &self.id);
        put(KEY_TOKEN_SECRET, &self.secret);
        put(KEY_USAGE_AUTHENTICATION, "true");
        put(KEY_USAGE_SIGNING, "true");
        put(KEY_EXTRA_GROUPS, KUBEADM_DEFAULT_GROUP);
        if !description.is_empty() {
            put(KEY_DESCRIPTION, description);
        }
        if let Some(e) = expiration {
            put(KEY_EXPIRATION, e);
        }
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": self.secret_name(), "namespace": TOKEN_NAMESPACE},
            "type": SECRET_TYPE,
            "data": data,
        })
    }
}

/// One decoded `data` value of a Secret (base64 in JSON), if present and UTF-8.
pub fn secret_value(secret: &Value, key: &str) -> Option<String> {
    let b64 = secret.get("data")?.get(key)?.as_str()?;
    let bytes = BASE64.decode(b64).ok()?;
    String::from_utf8(bytes).ok()
}

/// Whether an RFC 3339 `expiration` lies at or before `now` (Unix seconds). An unparsable
/// expiration counts as expired, as Kubernetes' `isSecretExpired`.
pub fn is_expired(expiration: &str, now: i64) -> bool {
    match expiration.parse::<jiff::Timestamp>() {
        Ok(t) => t.as_second() <= now,
        Err(_) => true,
    }
}

/// Extra groups of a token: comma-separated, each must be `system:bootstrappers:<name>`
/// (Kubernetes' `ValidateBootstrapGroupName`).
pub fn extra_groups(value: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for g in value.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        let rest = g.strip_prefix("system:bootstrappers:").unwrap_or("");
        let ok = !rest.is_empty()
            && rest.len() <= 256
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b':' || b == b'-')
            && rest
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ok {
            return Err(format!(
                "bootstrap group {g:?} is invalid (must match system:bootstrappers:[a-z0-9:-]{{0,255}}[a-z0-9])"
            ));
        }
        out.push(g.to_string());
    }
    Ok(out)
}

/// Why a bootstrap token was refused (clients only see 401).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejected {
    /// The Secret is missing, malformed, being deleted, not for authentication, or its secret
    /// does not match.
    #[error("{0}")]
    Invalid(String),
    /// Past its `expiration`.
    #[error("bootstrap token expired")]
    Expired,
}

/// The user a valid bootstrap token authenticates as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapUser {
    /// `system:bootstrap:<id>`.
    pub name: String,
    /// `system:bootstrappers`, the Secret's extra groups, `system:authenticated`.
    pub groups: Vec<String>,
}

/// Checks a presented token against its Secret (`None`: no such Secret) at time `now` (Unix
/// seconds), as Kubernetes' bootstrap `TokenAuthenticator`.
pub fn check_secret(
    token: &BootstrapToken,
    secret: Option<&Value>,
    now: i64,
) -> Result<BootstrapUser, Rejected> {
    let invalid = |why: &str| Err(Rejected::Invalid(why.to_string()));
    let Some(secret) = secret else {
        return invalid("no bootstrap token secret");
    };
    if secret.pointer("/metadata/deletionTimestamp").is_some() {
        return invalid("bootstrap token secret is being deleted");
    }
    if secret.get("type").and_then(Value::as_str) != Some(SECRET_TYPE) {
        return invalid("secret is not of type bootstrap.kubernetes.io/token");
    }
    let stored = secret_value(secret, KEY_TOKEN_SECRET).unwrap_or_default();
    if !bool::from(stored.as_bytes().ct_eq(token.secret.as_bytes())) {
        return invalid("bootstrap token secret does not match");
    }
    if secret_value(secret, KEY_TOKEN_ID).as_deref() != Some(token.id.as_str()) {
        return invalid("bootstrap token id does not match its secret");
    }
    if let Some(exp) = secret_value(secret, KEY_EXPIRATION)
        && is_expired(&exp, now)
    {
        return Err(Rejected::Expired);
    }
    if secret_value(secret, KEY_USAGE_AUTHENTICATION).as_deref() != Some("true") {
        return invalid("bootstrap token is not usable for authentication");
    }
    let extra = secret_value(secret, KEY_EXTRA_GROUPS).unwrap_or_default();
    let extra = extra_groups(&extra).map_err(Rejected::Invalid)?;
    let mut groups = vec![BOOTSTRAPPERS_GROUP.to_string()];
    groups.extend(extra.into_iter().filter(|g| g != BOOTSTRAPPERS_GROUP));
    groups.push("system:authenticated".to_string());
    Ok(BootstrapUser {
        name: format!("{USER_PREFIX}{}", token.id),
        groups,
    })
}

/// The `kubeconfig` of `cluster-info`: the cluster (CA and server) only, no users, as kubeadm
/// writes it.
pub fn cluster_info_kubeconfig(ca_pem: &str, server_url: &str) -> String {
    let doc = json!({
        "apiVersion": "v1",
        "clusters": [{
            "cluster": {
                "certificate-authority-data": BASE64.encode(ca_pem),
                "server": server_url,
            },
            "name": "",
        }],
        "contexts": null,
        "current-context": "",
        "kind": "Config",
        "preferences": {},
        "users": null,
    });
    serde_yaml::to_string(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_well_formed_tokens() {
        let t = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        assert_eq!(t.id, "abcdef");
        assert_eq!(t.secret, "0123456789abcdef");
        assert_eq!(t.to_string(), "abcdef.0123456789abcdef");
        assert_eq!(t.secret_name(), "bootstrap-token-abcdef");
        for bad in [
            "abcdef0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdef.0123456789abcde",
            "abcdef.0123456789abcdeff",
            "abcdef.0123456789abcde_",
            "eyJhbGciOiJFUzI1NiJ9.eyJ.sig",
            "",
        ] {
            assert!(BootstrapToken::parse(bad).is_none(), "{bad}");
        }
        let g = BootstrapToken::generate();
        assert_eq!(BootstrapToken::parse(&g.to_string()), Some(g.clone()));
        assert!(!format!("{g:?}").contains(&g.secret));
    }

    #[test]
    fn secret_checks_as_kubernetes() {
        let t = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let now = jiff::Timestamp::now().as_second();
        let s = t.secret(Some("2099-01-01T00:00:00Z"), "test");
        let u = check_secret(&t, Some(&s), now).unwrap();
        assert_eq!(u.name, "system:bootstrap:abcdef");
        assert_eq!(
            u.groups,
            vec![
                "system:bootstrappers",
                "system:bootstrappers:kubeadm:default-node-token",
                "system:authenticated"
            ]
        );
        // Wrong secret.
        let wrong = BootstrapToken::parse("abcdef.0123456789abcdee").unwrap();
        assert!(matches!(
            check_secret(&wrong, Some(&s), now),
            Err(Rejected::Invalid(_))
        ));
        // Expired, and unparsable expiry.
        let s = t.secret(Some("2020-01-01T00:00:00Z"), "");
        assert!(matches!(
            check_secret(&t, Some(&s), now),
            Err(Rejected::Expired)
        ));
        let s = t.secret(Some("tomorrow"), "");
        assert!(check_secret(&t, Some(&s), now).is_err());
        // No Secret at all.
        assert!(matches!(
            check_secret(&t, None, now),
            Err(Rejected::Invalid(_))
        ));
        // No expiry: valid.
        assert!(check_secret(&t, Some(&t.secret(None, "")), now).is_ok());
        // Not for authentication.
        let mut s = t.secret(None, "");
        s["data"][KEY_USAGE_AUTHENTICATION] = json!(BASE64.encode("false"));
        assert!(check_secret(&t, Some(&s), now).is_err());
        // Wrong type.
        let mut s = t.secret(None, "");
        s["type"] = json!("Opaque");
        assert!(check_secret(&t, Some(&s), now).is_err());
        // Extra groups must be system:bootstrappers:*.
        let mut s = t.secret(None, "");
        s["data"][KEY_EXTRA_GROUPS] = json!(BASE64.encode("system:masters"));
        assert!(check_secret(&t, Some(&s), now).is_err());
        s["data"][KEY_EXTRA_GROUPS] =
            json!(BASE64.encode("system:bootstrappers:a, system:bootstrappers:b-1"));
        assert_eq!(
            check_secret(&t, Some(&s), now).unwrap().groups,
            vec![
                "system:bootstrappers",
                "system:bootstrappers:a",
                "system:bootstrappers:b-1",
                "system:authenticated"
            ]
        );
    }

    #[test]
    fn cluster_info_kubeconfig_names_ca_and_server() {
        let y = cluster_info_kubeconfig("PEM", "https://10.0.0.1:6443");
        let v: Value = serde_yaml::from_str(&y).unwrap();
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://10.0.0.1:6443"
        );
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"],
            BASE64.encode("PEM")
        );
        assert!(v["users"].is_null());
    }
}
