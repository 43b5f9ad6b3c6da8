//! The bootstrap signer (Kubernetes' `pkg/controller/bootstrap/bootstrapsigner.go`): keeps the
//! `kube-public/cluster-info` ConfigMap signed with one detached JWS `jws-kubeconfig-<token-id>`
//! per bootstrap token that allows signing (`usage-bootstrap-signing: "true"`, not expired), and
//! drops the signatures of tokens that are gone. A joining node that knows a token checks the
//! `kubeconfig` it reads anonymously against that token's signature.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::Error;
use crate::util;

/// Namespace of the signed ConfigMap.
pub const PUBLIC_NAMESPACE: &str = "kube-public";
/// Name of the signed ConfigMap.
pub const CLUSTER_INFO: &str = "cluster-info";
/// The signed key of `cluster-info`.
pub const KUBECONFIG_KEY: &str = "kubeconfig";
/// Prefix of the signature keys.
pub const JWS_PREFIX: &str = "jws-kubeconfig-";
/// Namespace of bootstrap-token Secrets.
pub const TOKEN_NAMESPACE: &str = "kube-system";
/// `type` of bootstrap-token Secrets.
pub const TOKEN_SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";

/// The fields of a bootstrap-token Secret the controllers read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSecret {
    /// `token-id`.
    pub id: String,
    /// `token-secret`.
    pub secret: String,
    /// `expiration` (RFC 3339), if set.
    pub expiration: Option<String>,
    /// `usage-bootstrap-signing == "true"`.
    pub signing: bool,
}

impl TokenSecret {
    /// Reads a Secret of type `bootstrap.kubernetes.io/token` named `bootstrap-token-<id>`;
    /// None for anything else (Kubernetes' `validateSecretForSigning` / `ParseBootstrapTokenSecret`).
    pub fn from_secret(s: &Secret) -> Option<TokenSecret> {
        if s.type_.as_deref() != Some(TOKEN_SECRET_TYPE) {
            return None;
        }
        let data = s.data.as_ref()?;
        let get = |k: &str| {
            data.get(k)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
        };
        let id = get("token-id")?;
        let secret = get("token-secret")?;
        if s.name_any() != format!("bootstrap-token-{id}") {
            return None;
        }
        Some(TokenSecret {
            id,
            secret,
            expiration: get("expiration"),
            signing: get("usage-bootstrap-signing").as_deref() == Some("true"),
        })
    }

    /// Time left until expiry at `now`: None when the token never expires, zero when it has
    /// (an unparsable expiry counts as expired, as Kubernetes' `GetExpiration`).
    pub fn time_left(&self, now: jiff::Timestamp) -> Option<Duration> {
        time_left(self.expiration.as_deref(), now)
    }

    /// Whether the token has expired at `now`.
    pub fn expired(&self, now: jiff::Timestamp) -> bool {
        self.time_left(now).is_some_and(|d| d.is_zero())
    }
}

/// Time left until an RFC 3339 `expiration` at `now`: None without one, zero once passed or
/// when it does not parse (Kubernetes treats an unparsable expiry as expired).
pub fn time_left(expiration: Option<&str>, now: jiff::Timestamp) -> Option<Duration> {
    let Ok(t) = expiration?.parse::<jiff::Timestamp>() else {
        return Some(Duration::ZERO);
    };
    Some(t.duration_since(now).try_into().unwrap_or(Duration::ZERO))
}

/// kubeadm's `jws.ComputeDetachedSignature`: an HS256 JWS over `content`, keyed with the
/// token's secret, protected header `{"alg":"HS256","kid":"<token-id>"}`, serialized compact
/// with the payload left out (`<header>..<signature>`, RFC 7515 appendix F).
pub fn compute_detached_signature(
    content: &str,
    token_id: &str,
    token_secret: &str,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = Header::new(Algorithm::HS256);
    header.typ = None;
    header.kid = Some(token_id.to_string());
    let header_json = serde_json::to_vec(&header)?;
    let header_b64 = URL_SAFE_NO_PAD.encode(header_json);
    let signing_input = format!("{header_b64}.{}", URL_SAFE_NO_PAD.encode(content));
    let signature = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &EncodingKey::from_secret(token_secret.as_bytes()),
        Algorithm::HS256,
    )?;
    Ok(format!("{header_b64}..{signature}"))
}

/// kubeadm's `jws.DetachedTokenIsValid`, comparing in constant time.
pub fn detached_signature_is_valid(
    detached: &str,
    content: &str,
    token_id: &str,
    token_secret: &str,
) -> bool {
    let Ok(want) = compute_detached_signature(content, token_id, token_secret) else {
        return false;
    };
    let (a, b) = (want.as_bytes(), detached.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `data` `cluster-info` should have: its kubeconfig, one signature per signing token, no
/// stale signatures. None when the ConfigMap has no kubeconfig (nothing to sign).
pub fn signed_data(
    data: &BTreeMap<String, String>,
    tokens: &[TokenSecret],
    now: jiff::Timestamp,
) -> Option<BTreeMap<String, String>> {
    let content = data.get(KUBECONFIG_KEY)?;
    let mut out: BTreeMap<String, String> = data
        .iter()
        .filter(|(k, _)| !k.starts_with(JWS_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for t in tokens.iter().filter(|t| t.signing && !t.expired(now)) {
        match compute_detached_signature(content, &t.id, &t.secret) {
            Ok(sig) => {
                out.insert(format!("{JWS_PREFIX}{}", t.id), sig);
            }
            Err(e) => tracing::warn!(token = %t.id, error = %e, "could not sign cluster-info"),
        }
    }
    Some(out)
}

struct Ctx {
    client: Client,
    secrets: Store<Secret>,
}

/// Runs the bootstrap signer until its watches end.
pub async fn run(client: Client) -> Result<(), Error> {
    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), TOKEN_NAMESPACE);
    let (reader, writer) = kube::runtime::reflector::store();
    let secret_stream = kube::runtime::reflector(
        writer,
        watcher(
            secrets_api,
            watcher::Config::default().fields(&format!("type={TOKEN_SECRET_TYPE}")),
        ),
    )
    .touched_objects()
    .filter_map(|r| futures::future::ready(r.ok()))
    .map(|_| ObjectRef::<ConfigMap>::new(CLUSTER_INFO).within(PUBLIC_NAMESPACE));
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        secrets: reader,
    });
    let cms: Api<ConfigMap> = Api::namespaced(client, PUBLIC_NAMESPACE);
    util::run_controller(
        Controller::new(
            cms,
            watcher::Config::default().fields(&format!("metadata.name={CLUSTER_INFO}")),
        )
        .reconcile_on(secret_stream),
        reconcile,
        ctx,
        "bootstrapsigner",
        Duration::from_secs(2),
    )
    .await
}

async fn reconcile(cm: Arc<ConfigMap>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if cm.name_any() != CLUSTER_INFO || cm.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let now = jiff::Timestamp::now();
    let tokens: Vec<TokenSecret> = ctx
        .secrets
        .state()
        .iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .filter_map(|s| TokenSecret::from_secret(s))
        .collect();
    let data = cm.data.clone().unwrap_or_default();
    let Some(want) = signed_data(&data, &tokens, now) else {
        tracing::debug!("cluster-info has no kubeconfig key; nothing to sign");
        return Ok(Action::await_change());
    };
    if want != data {
        let mut new = (*cm).clone();
        new.data = Some(want);
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), PUBLIC_NAMESPACE);
        match api
            .replace(CLUSTER_INFO, &PostParams::default(), &new)
            .await
        {
            Ok(_) => tracing::info!("signed kube-public/cluster-info"),
            // A newer version will be reconciled again.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Signatures of tokens that expire are dropped when they do.
    let next = tokens
        .iter()
        .filter(|t| t.signing)
        .filter_map(|t| t.time_left(now))
        .filter(|d| !d.is_zero())
        .min();
    Ok(match next {
        Some(d) => Action::requeue(d + Duration::from_secs(1)),
        None => Action::await_change(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    // Vectors of Kubernetes' `cluster-bootstrap/token/jws` tests.
    const CONTENT: &str = "Hello from the other side. I must have called a thousand times.";

    #[test]
    fn signature_matches_kubernetes() {
        let sig = compute_detached_signature(CONTENT, "joshua", "my voice is my passcode").unwrap();
        assert_eq!(
            sig,
            "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..VShe2taLd-YTrmWuRkcL_8QTNDHYxQIEBsAYYiIj1_8"
        );
        let sig = compute_detached_signature("", "joshua", "my voice is my passcode").unwrap();
        assert_eq!(
            sig,
            "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..7Ui1ALizW4jXphVUB7xUqC9vLYLL9RZeOFfVLoB7Tgk"
        );
        let secret = "my voice is my passcode. my voice is my passcode";
        let sig =
            "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..SFoKn0-YxqnvpSExt4LuCZ_7pvIBdX3SoUO_NsTpkdg";
        assert!(detached_signature_is_valid(sig, CONTENT, "joshua", secret));
        assert!(!detached_signature_is_valid(
            &format!("{sig}foo"),
            CONTENT,
            "joshua",
            secret
        ));
        assert!(!detached_signature_is_valid(sig, "other", "joshua", secret));
    }

    fn secret(id: &str, signing: bool, expiration: Option<&str>) -> Secret {
        let mut data = BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            data.insert(k.to_string(), ByteString(v.as_bytes().to_vec()));
        };
        put("token-id", id);
        put("token-secret", "0123456789abcdef");
        put(
            "usage-bootstrap-signing",
            if signing { "true" } else { "false" },
        );
        if let Some(e) = expiration {
            put("expiration", e);
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(format!("bootstrap-token-{id}")),
                namespace: Some(TOKEN_NAMESPACE.into()),
                ..Default::default()
            },
            type_: Some(TOKEN_SECRET_TYPE.into()),
            data: Some(data),
            ..Default::default()
        }
    }

    #[test]
    fn signs_for_signing_tokens_only_and_drops_stale_signatures() {
        let now = jiff::Timestamp::now();
        let tokens: Vec<TokenSecret> = [
            secret("aaaaaa", true, None),
            secret("bbbbbb", false, None),
            secret("cccccc", true, Some("2020-01-01T00:00:00Z")),
            secret("dddddd", true, Some("2999-01-01T00:00:00Z")),
        ]
        .iter()
        .filter_map(TokenSecret::from_secret)
        .collect();
        assert_eq!(tokens.len(), 4);
        let data: BTreeMap<String, String> = [
            ("kubeconfig".to_string(), "apiVersion: v1".to_string()),
            ("jws-kubeconfig-zzzzzz".to_string(), "stale".to_string()),
        ]
        .into();
        let out = signed_data(&data, &tokens, now).unwrap();
        let keys: Vec<&str> = out.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            vec![
                "jws-kubeconfig-aaaaaa",
                "jws-kubeconfig-dddddd",
                "kubeconfig"
            ]
        );
        assert!(detached_signature_is_valid(
            &out["jws-kubeconfig-aaaaaa"],
            "apiVersion: v1",
            "aaaaaa",
            "0123456789abcdef"
        ));
        // Stable: signing again changes nothing.
        assert_eq!(signed_data(&out, &tokens, now).unwrap(), out);
        assert!(signed_data(&BTreeMap::new(), &tokens, now).is_none());
    }

    #[test]
    fn only_well_named_bootstrap_secrets_count() {
        let mut s = secret("aaaaaa", true, None);
        s.metadata.name = Some("bootstrap-token-bbbbbb".into());
        assert!(TokenSecret::from_secret(&s).is_none());
        let mut s = secret("aaaaaa", true, None);
        s.type_ = Some("Opaque".into());
        assert!(TokenSecret::from_secret(&s).is_none());
        let t = TokenSecret::from_secret(&secret("aaaaaa", true, Some("garbage"))).unwrap();
        assert!(t.expired(jiff::Timestamp::now()));
    }
}
