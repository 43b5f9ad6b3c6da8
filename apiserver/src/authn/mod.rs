//! Authentication: client certificates (verified by the TLS layer) and bearer tokens —
//! ServiceAccount JWTs signed ES256 with the data dir's service-account key, carrying
//! Kubernetes' claims. A token stops working when its ServiceAccount (or bound pod or secret)
//! is deleted or replaced by a new object of the same name.

pub mod bootstrap_token;

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde_json::{Value, json};

use crate::auth::{ClientCertIdentity, UserInfo};
use crate::cache::reader::CacheReader;
use crate::error::{ApiError, ApiResult};
use crate::registry::ResourceDef;
use crate::registry::resources::{PODS, SECRETS, SERVICEACCOUNTS};

/// The issuer (and default audience) of service-account tokens, as Kubernetes' default.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Why a token was rejected (never shown to clients: they only see 401).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts of JSON.
    #[error("malformed token")]
    Malformed,
    /// Signature does not verify or algorithm is not ES256.
    #[error("invalid signature")]
    Signature,
    /// Wrong issuer or audience.
    #[error("token not meant for this apiserver")]
    Audience,
    /// Expired or not yet valid.
    #[error("token expired or not yet valid")]
    Expired,
    /// The ServiceAccount, pod or secret it is bound to is gone or was replaced.
    #[error("{0}")]
    Revoked(String),
    /// The signing key could not be loaded.
    #[error("signing key: {0}")]
    Key(String),
}

/// Signs and verifies service-account tokens.
pub struct TokenAuthority {
    key: EcdsaKeyPair,
    public: Vec<u8>,
    key_id: String,
    rng: SystemRandom,
    /// Claims of tokens whose signature verified, by the token's SHA-256: a client sends the
    /// same token with every request, and the signature check is most of a request's
    /// authentication cost. Issuer, audience, time and the bound objects are still checked
    /// on every request, so revocation is as immediate as without it.
    verified: std::sync::Mutex<HashMap<[u8; 32], Arc<Value>>>,
}

/// Verified tokens remembered at most (the memory is dropped whole when full).
const VERIFIED_TOKENS: usize = 4096;

impl std::fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthority")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// An object a token is bound to (`boundObjectRef` of a TokenRequest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundObject {
    /// `Pod` or `Secret` (or `Node`).
    pub kind: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

impl TokenAuthority {
    /// Loads the PKCS#8 PEM signing key.
    pub fn from_pem(private_key_pem: &str) -> Result<Self, TokenError> {
        let mut reader = private_key_pem.as_bytes();
        let der = match rustls_pemfile::private_key(&mut reader) {
            Ok(Some(rustls::pki_types::PrivateKeyDer::Pkcs8(k))) => k.secret_pkcs8_der().to_vec(),
            Ok(_) => return Err(TokenError::Key("not a PKCS#8 private key".into())),
            Err(e) => return Err(TokenError::Key(e.to_string())),
        };
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
            .map_err(|e| TokenError::Key(e.to_string()))?;
        let public = key.public_key().as_ref().to_vec();
        let digest = ring::digest::digest(&ring::digest::SHA256, &public);
        let key_id = URL_SAFE_NO_PAD.encode(digest.as_ref());
        Ok(TokenAuthority {
            key,
            public,
            key_id,
            rng,
            verified: Default::default(),
        })
    }

    /// Signs `claims` as an ES256 JWT.
    pub fn sign(&self, claims: &Value) -> Result<String, TokenError> {
        let header = json!({"alg": "ES256", "kid": self.key_id});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| TokenError::Signature)?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        ))
    }

    /// Verifies signature, issuer, audience and time; returns the claims.
    pub fn verify(&self, token: &str, now: i64) -> Result<Arc<Value>, TokenError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut id = [0u8; 32];
        id.copy_from_slice(digest.as_ref());
        let known = self.verified.lock().ok().and_then(|m| m.get(&id).cloned());
        let claims = match known {
            Some(c) => c,
            None => {
                let c = Arc::new(self.verify_signature(token)?);
                if let Ok(mut m) = self.verified.lock() {
                    if m.len() >= VERIFIED_TOKENS {
                        m.clear();
                    }
                    m.insert(id, c.clone());
                }
                c
            }
        };
        Self::check_claims(claims, now)
    }

    /// Checks the JWT's shape and ES256 signature; returns its claims.
    fn verify_signature(&self, token: &str) -> Result<Value, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: Value = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if header.get("alg").and_then(Value::as_str) != Some("ES256") {
            return Err(TokenError::Signature);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| TokenError::Malformed)?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public)
            .verify(format!("{h}.{c}").as_bytes(), &sig)
            .map_err(|_| TokenError::Signature)?;
        URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)
    }

    /// Issuer, audience and validity time of verified claims.
    fn check_claims(claims: Arc<Value>, now: i64) -> Result<Arc<Value>, TokenError> {
        if claims.get("iss").and_then(Value::as_str) != Some(ISSUER) {
            return Err(TokenError::Audience);
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => a == ISSUER,
            Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(ISSUER)),
            _ => false,
        };
        if !aud_ok {
            return Err(TokenError::Audience);
        }
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or(TokenError::Malformed)?;
        let nbf = claims.get("nbf").and_then(Value::as_i64).unwrap_or(0);
        if now >= exp || now < nbf {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// Issues a token for a ServiceAccount with Kubernetes' claims. Returns the token and its
    /// expiry (Unix seconds).
    #[allow(clippy::too_many_arguments)]
    pub fn issue_service_account_token(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        audiences: &[String],
        expiration_seconds: i64,
        bound: Option<&BoundObject>,
        now: i64,
    ) -> Result<(String, i64), TokenError> {
        let exp = now + expiration_seconds;
        let mut k8s = json!({"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}});
        if let (Some(b), Value::Object(m)) = (bound, &mut k8s) {
            let key = match b.kind.as_str() {
                "Pod" => "pod",
                "Secret" => "secret",
                _ => "node",
            };
            m.insert(key.into(), json!({"name": b.name, "uid": b.uid}));
        }
        let aud: Vec<String> = if audiences.is_empty() {
            vec![ISSUER.to_string()]
        } else {
            audiences.to_vec()
        };
        let claims = json!({
            "aud": aud,
            "exp": exp,
            "iat": now,
            "iss": ISSUER,
            "jti": uuid::Uuid::new_v4().to_string(),
            "kubernetes.io": k8s,
            "nbf": now,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
        });
        Ok((self.sign(&claims)?, exp))
    }
}

async fn check_bound(
    reader: &CacheReader,
    def: &ResourceDef,
    ns: &str,
    claim: Option<&Value>,
) -> Result<Option<(String, String)>, TokenError> {
    let Some(c) = claim else { return Ok(None) };
    let name = c
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let uid = c
        .get("uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let obj = reader
        .cached_or_stored(def, ns, &name)
        .await
        .map_err(|e| TokenError::Revoked(e.message))?;
    let Some(obj) = obj else {
        return Err(TokenError::Revoked(format!(
            "{} {name} not found",
            def.kind
        )));
    };
    if obj.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid.as_str()) {
        return Err(TokenError::Revoked(format!(
            "{} {name} uid mismatch",
            def.kind
        )));
    }
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        return Err(TokenError::Revoked(format!(
            "{} {name} is being deleted",
            def.kind
        )));
    }
    Ok(Some((name, uid)))
}

/// Validates a service-account JWT against the current state and returns its user.
pub async fn authenticate_token(
    auth: Authenticator<'_>,
    token: &str,
) -> Result<UserInfo, TokenError> {
    let tokens = auth
        .tokens
        .ok_or(TokenError::Key("no token authority".into()))?;
    let claims = tokens.verify(token, jiff::Timestamp::now().as_second())?;
    let k8s = claims.get("kubernetes.io").ok_or(TokenError::Malformed)?;
    let ns = k8s
        .get("namespace")
        .and_then(Value::as_str)
        .ok_or(TokenError::Malformed)?;
    let sa = k8s.get("serviceaccount").ok_or(TokenError::Malformed)?;
    let (sa_name, sa_uid) = check_bound(auth.reader, &SERVICEACCOUNTS, ns, Some(sa))
        .await?
        .ok_or(TokenError::Malformed)?;
    if claims.get("sub").and_then(Value::as_str)
        != Some(format!("system:serviceaccount:{ns}:{sa_name}").as_str())
    {
        return Err(TokenError::Malformed);
    }
    let pod = check_bound(auth.reader, &PODS, ns, k8s.get("pod")).await?;
    check_bound(auth.reader, &SECRETS, ns, k8s.get("secret")).await?;
    let mut user = UserInfo::service_account(ns, &sa_name, &sa_uid);
    if let Some(jti) = claims.get("jti").and_then(Value::as_str) {
        user.extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            vec![format!("JTI={jti}")],
        );
    }
    if let Some((pod_name, pod_uid)) = pod {
        user.extra.insert(
            "authentication.kubernetes.io/pod-name".into(),
            vec![pod_name],
        );
        user.extra
            .insert("authentication.kubernetes.io/pod-uid".into(), vec![pod_uid]);
    }
    if let Some(node) = k8s.pointer("/node/name").and_then(Value::as_str) {
        user.extra.insert(
            "authentication.kubernetes.io/node-name".into(),
            vec![node.to_string()],
        );
    }
    Ok(user)
}

/// Authenticates a bearer token that has the bootstrap-token shape against its Secret in
/// `kube-system`, read through the Secret cache (with a storage fallback for a Secret created a
/// moment ago). None when the token does not look like a bootstrap token.
pub async fn authenticate_bootstrap_token(
    reader: &CacheReader,
    token: &str,
) -> Option<Result<UserInfo, TokenError>> {
    use crate::authn::bootstrap_token::{BootstrapToken, Rejected, TOKEN_NAMESPACE, check_secret};
    let token = BootstrapToken::parse(token)?;
    let secret = match reader
        .cached_or_stored(&SECRETS, TOKEN_NAMESPACE, &token.secret_name())
        .await
    {
        Ok(s) => s,
        Err(e) => return Some(Err(TokenError::Revoked(e.message))),
    };
    let now = jiff::Timestamp::now().as_second();
    Some(match check_secret(&token, secret.as_ref(), now) {
        Ok(u) => Ok(UserInfo {
            name: u.name,
            groups: u.groups,
            ..Default::default()
        }),
        Err(Rejected::Expired) => Err(TokenError::Expired),
        Err(Rejected::Invalid(why)) => Err(TokenError::Revoked(why)),
    })
}

/// Authenticates a request: a bearer token when one is sent (a bootstrap token `<id>.<secret>`
/// or a service-account JWT; a bad one is a 401, whatever else the request carries), else the
/// verified client certificate, else None (anonymous).
pub async fn authenticate(
    authn: Authenticator<'_>,
    headers: &HeaderMap,
    cert: Option<&ClientCertIdentity>,
) -> ApiResult<Option<UserInfo>> {
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let bytes = auth.as_bytes();
        let token = bytes
            .strip_prefix(b"Bearer ")
            .or_else(|| bytes.strip_prefix(b"bearer "))
            .map(|t| t.trim_ascii())
            .filter(|t| !t.is_empty());
        if let Some(token) = token {
            // A bearer token that is not even text is a bad token (401), not an anonymous
            // request.
            let Ok(token) = std::str::from_utf8(token) else {
                return Err(ApiError::unauthorized());
            };
            if let Some(r) = authenticate_bootstrap_token(authn.reader, token).await {
                return match r {
                    Ok(u) => Ok(Some(u)),
                    Err(e) => {
                        tracing::debug!(error = %e, "bootstrap token rejected");
                        Err(ApiError::unauthorized())
                    }
                };
            }
            return match authenticate_token(authn, token).await {
                Ok(u) => Ok(Some(u)),
                Err(e) => {
                    tracing::debug!(error = %e, "bearer token rejected");
                    Err(ApiError::unauthorized())
                }
            };
        }
    }
    Ok(cert.map(|c| c.0.clone()))
}

/// The token authority of the PKI's service-account key.
pub fn authority(pki: &crate::pki::Pki) -> Result<TokenAuthority, TokenError> {
    TokenAuthority::from_pem(pki.sa_private_key_pem())
}

/// What authentication reads: the watch caches (bootstrap-token Secrets and the objects a
/// service-account token is bound to) and the token authority, once installed.
#[derive(Clone, Copy)]
pub struct Authenticator<'a> {
    /// The read handle on the watch caches.
    pub reader: &'a CacheReader,
    /// The service-account token authority (None until the PKI is loaded).
    pub tokens: Option<&'a Arc<TokenAuthority>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority() -> TokenAuthority {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        TokenAuthority::from_pem(&key.serialize_pem()).unwrap()
    }

    #[test]
    fn issues_and_verifies_tokens() {
        let t = authority();
        let (tok, exp) = t
            .issue_service_account_token("entenhausen", "donald", "u1", &[], 3600, None, 1000)
            .unwrap();
        assert_eq!(exp, 4600);
        let claims = t.verify(&tok, 1001).unwrap();
        assert_eq!(claims["sub"], "system:serviceaccount:entenhausen:donald");
        assert_eq!(claims["kubernetes.io"]["serviceaccount"]["uid"], "u1");
        assert!(matches!(t.verify(&tok, 4600), Err(TokenError::Expired)));
        // Tampered payload.
        let mut parts: Vec<&str> = tok.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(claims.to_string().replace("donald", "dagobert"));
        parts[1] = &forged;
        assert!(matches!(
            t.verify(&parts.join("."), 1001),
            Err(TokenError::Signature)
        ));
        // Another key.
        assert!(matches!(
            authority().verify(&tok, 1001),
            Err(TokenError::Signature)
        ));
        assert!(matches!(t.verify("abc", 1001), Err(TokenError::Malformed)));
        // Wrong audience.
        let (tok, _) = t
            .issue_service_account_token("a", "b", "u", &["vault".into()], 600, None, 1000)
            .unwrap();
        assert!(matches!(t.verify(&tok, 1001), Err(TokenError::Audience)));
    }
}
