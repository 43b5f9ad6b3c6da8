//! Encryption at rest, as kube-apiserver's `--encryption-provider-config`.
//!
//! The file is an `apiserver.config.k8s.io/v1` `EncryptionConfiguration`: a list of rules, each
//! naming resources (`secrets`, `deployments.apps`, `*.apps`, `*.` for the core group, `*.*` for
//! everything, custom resources as `<plural>.<group>`) and an ordered list of providers. The
//! first provider encrypts every write; every listed provider can read, so keys rotate by
//! putting the new key first and rewriting the objects (`kubectl get secrets -A -o json |
//! kubectl replace -f -` rewrites even unchanged objects whose stored form is stale).
//!
//! Stored values carry Kubernetes' prefix, so a store written by kube-apiserver with the same
//! keys reads here and back: `k8s:enc:<provider>:v1:<key name>:` followed by
//! - `aescbc`: a random 16-byte IV, then AES-CBC with PKCS#7 padding;
//! - `aesgcm`: a random 12-byte nonce, then AES-GCM sealed with the storage key as
//!   additional data (a value copied to another key does not open);
//! - `secretbox`: a random 24-byte nonce, then NaCl secretbox (XSalsa20-Poly1305).
//!
//! `identity` stores plain bytes. Resources no rule names are stored plain. KMS providers are
//! refused with a message: no KMS plugin can run here.
//!
//! [`EncryptedStorage`] wraps any [`Storage`] backend and transforms values on the way in and
//! out, so both stores (SQLite and etcd) encrypt the same way.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes128Gcm, Aes256Gcm, AesGcm};
use async_trait::async_trait;
use base64::Engine;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use crypto_secretbox::XSalsa20Poly1305;
use futures::StreamExt;
use rand::RngCore;
use serde_json::Value;

use super::{
    Event, KeyValue, ListOptions, ListResult, Result, Revision, Storage, StorageError, WatchStream,
};

/// The prefix every encrypted value starts with.
const ENCRYPTED: &[u8] = b"k8s:enc:";
const AES_KEY_SIZES: &[usize] = &[16, 24, 32];
const SECRETBOX_KEY_SIZES: &[usize] = &[32];

/// A configuration that cannot be used; the message lists every problem.
#[derive(Debug, thiserror::Error)]
#[error("--encryption-provider-config {path}: {message}")]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// What is wrong (Kubernetes' field error wording).
    pub message: String,
}

/// Which resources a rule covers.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Matcher {
    /// One resource of one group (`secrets`, `deployments.apps`).
    Exact { group: String, resource: String },
    /// Every resource of a group (`*.apps`; `*.` is the core group).
    Group(String),
    /// Every resource (`*.*`).
    All,
}

impl Matcher {
    fn matches(&self, group: &str, resource: &str) -> bool {
        match self {
            Matcher::Exact {
                group: g,
                resource: r,
            } => g == group && r == resource,
            Matcher::Group(g) => g == group,
            Matcher::All => true,
        }
    }
}

enum Gcm {
    A128(Box<Aes128Gcm>),
    A192(Box<AesGcm<aes::Aes192, U12>>),
    A256(Box<Aes256Gcm>),
}

enum Cipher {
    /// The raw AES key (16, 24 or 32 bytes); a CBC encryptor is made per value (fresh IV).
    Cbc(Vec<u8>),
    Gcm(Gcm),
    Secretbox(Box<XSalsa20Poly1305>),
}

struct NamedKey {
    /// `k8s:enc:<provider>:v1:<name>:`
    prefix: Vec<u8>,
    cipher: Cipher,
}

enum Provider {
    Identity,
    Keys(Vec<NamedKey>),
}

struct Rule {
    matchers: Vec<Matcher>,
    providers: Vec<Provider>,
}

/// A parsed, validated `EncryptionConfiguration`.
pub struct EncryptionConfig {
    rules: Vec<Rule>,
}

impl std::fmt::Debug for EncryptionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("EncryptionConfig")
            .field("rules", &self.rules.len())
            .finish()
    }
}

/// Field errors in Kubernetes' wording (`path: Required value: detail`).
#[derive(Default)]
struct Errors(Vec<String>);

impl Errors {
    fn required(&mut self, path: &str, detail: &str) {
        self.0.push(format!("{path}: Required value: {detail}"));
    }
    fn invalid(&mut self, path: &str, value: &str, detail: &str) {
        self.0
            .push(format!("{path}: Invalid value: {value:?}: {detail}"));
    }
}

impl EncryptionConfig {
    /// Reads and validates the file.
    pub fn load(path: &Path) -> Result<EncryptionConfig, ConfigError> {
        let err = |message: String| ConfigError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        EncryptionConfig::parse(&text).map_err(err)
    }

    /// Parses and validates a configuration's text (YAML or JSON).
    pub fn parse(text: &str) -> Result<EncryptionConfig, String> {
        let doc: Value =
            serde_yaml::from_str(text).map_err(|e| format!("error while parsing file: {e}"))?;
        let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
        if api_version != "apiserver.config.k8s.io/v1" || kind != "EncryptionConfiguration" {
            return Err(format!(
                "error while parsing file: no kind \"{kind}\" is registered for version \"{api_version}\" (expected apiVersion apiserver.config.k8s.io/v1, kind EncryptionConfiguration)"
            ));
        }
        let mut errs = Errors::default();
        let resources = doc
            .get("resources")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if resources.is_empty() {
            errs.required("resources", "at least one resources is required");
        }
        let mut rules = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        for (i, conf) in resources.iter().enumerate() {
            let r_path = format!("resources[{i}].resources");
            let p_path = format!("resources[{i}].providers");
            let names: Vec<String> = conf
                .get("resources")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|v| v.as_str().unwrap_or("").to_string())
                        .collect()
                })
                .unwrap_or_default();
            let providers_conf = conf
                .get("providers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if names.is_empty() {
                errs.required(&r_path, &format!("at least one {r_path} is required"));
            }
            if providers_conf.is_empty() {
                errs.required(&p_path, &format!("at least one {p_path} is required"));
            }
            let mut matchers = Vec::new();
            for (j, name) in names.iter().enumerate() {
                let path = format!("{r_path}[{j}]");
                if seen.contains(name) {
                    errs.invalid(
                        &path,
                        name,
                        "the same resource cannot be specified multiple times",
                    );
                    continue;
                }
                seen.push(name.clone());
                match matcher(name) {
                    Ok(m) => matchers.push(m),
                    Err(detail) => errs.invalid(&path, name, detail),
                }
            }
            let mut providers = Vec::new();
            for (j, p) in providers_conf.iter().enumerate() {
                let path = format!("{p_path}[{j}]");
                if let Some(provider) = provider(p, &path, &mut errs) {
                    providers.push(provider);
                }
            }
            rules.push(Rule {
                matchers,
                providers,
            });
        }
        if !errs.0.is_empty() {
            return Err(if errs.0.len() == 1 {
                errs.0.remove(0)
            } else {
                format!("[{}]", errs.0.join(", "))
            });
        }
        Ok(EncryptionConfig { rules })
    }

    fn rule_for(&self, group: &str, resource: &str) -> Option<usize> {
        self.rules
            .iter()
            .position(|r| r.matchers.iter().any(|m| m.matches(group, resource)))
    }

    /// Whether any rule actually encrypts (a configuration of identity only does not).
    pub fn encrypts(&self) -> bool {
        self.rules.iter().any(|r| {
            r.providers
                .first()
                .is_some_and(|p| matches!(p, Provider::Keys(_)))
        })
    }
}

/// `secrets` → core/secrets, `deployments.apps` → apps/deployments, `*.apps`, `*.`, `*.*`.
fn matcher(name: &str) -> Result<Matcher, &'static str> {
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return Err("resource name should not contain capital letters");
    }
    match name {
        "*.*" => return Ok(Matcher::All),
        "*" => {
            return Err(
                "use '*.' to encrypt all the resources from core API group or *.* to encrypt all resources",
            );
        }
        "" => return Err("resource name must not be empty"),
        _ => {}
    }
    let (resource, group) = name.split_once('.').unwrap_or((name, ""));
    if resource == "*" {
        return Ok(Matcher::Group(group.to_string()));
    }
    if group == "extensions" {
        return Err("'extensions' group has been removed and cannot be used for encryption");
    }
    if group == "events.k8s.io" {
        return Err(
            "'*.events.k8s.io' objects are stored using the 'events' API group in etcd. Use 'events' instead in the config file",
        );
    }
    Ok(Matcher::Exact {
        group: group.to_string(),
        resource: resource.to_string(),
    })
}

fn provider(p: &Value, path: &str, errs: &mut Errors) -> Option<Provider> {
    let kinds: Vec<&str> = ["kms", "aesgcm", "aescbc", "secretbox", "identity"]
        .into_iter()
        .filter(|k| p.get(k).is_some())
        .collect();
    let shown = serde_json::to_string(p).unwrap_or_default();
    match kinds.as_slice() {
        [] => {
            errs.invalid(
                path,
                &shown,
                "provider does not contain any of the expected providers: KMS, AESGCM, AESCBC, Secretbox, Identity",
            );
            None
        }
        [_, _, ..] => {
            errs.invalid(
                path,
                &shown,
                "more than one provider specified in a single element, should split into different list elements",
            );
            None
        }
        ["identity"] => Some(Provider::Identity),
        ["kms"] => {
            errs.invalid(
                &format!("{path}.kms"),
                &shown,
                "KMS providers are not supported by Lotse (no KMS plugin runs here); use aescbc, aesgcm or secretbox",
            );
            None
        }
        [kind] => {
            let keys_path = format!("{path}.{kind}.keys");
            let keys = p
                .get(kind)
                .and_then(|k| k.get("keys"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if keys.is_empty() {
                errs.required(&keys_path, "at least one keys is required");
                return None;
            }
            let sizes = if *kind == "secretbox" {
                SECRETBOX_KEY_SIZES
            } else {
                AES_KEY_SIZES
            };
            let mut out = Vec::new();
            for (i, k) in keys.iter().enumerate() {
                let kp = format!("{keys_path}[{i}]");
                let name = k.get("name").and_then(Value::as_str).unwrap_or("");
                let secret = k.get("secret").and_then(Value::as_str).unwrap_or("");
                if name.is_empty() {
                    errs.required(&format!("{kp}.name"), "name is a mandatory field for a key");
                }
                if secret.is_empty() {
                    errs.required(
                        &format!("{kp}.secret"),
                        "secret is a mandatory field for a key",
                    );
                    continue;
                }
                let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(secret) else {
                    errs.invalid(
                        &format!("{kp}.secret"),
                        "REDACTED",
                        "secrets must be base64 encoded",
                    );
                    continue;
                };
                if !sizes.contains(&raw.len()) {
                    errs.invalid(
                        &format!("{kp}.secret"),
                        "REDACTED",
                        &format!(
                            "secret is not of the expected length, got {}, expected one of [{}]",
                            raw.len(),
                            sizes
                                .iter()
                                .map(usize::to_string)
                                .collect::<Vec<_>>()
                                .join(" ")
                        ),
                    );
                    continue;
                }
                if name.is_empty() {
                    continue;
                }
                let cipher = match *kind {
                    "aescbc" => Cipher::Cbc(raw),
                    "aesgcm" => Cipher::Gcm(match raw.len() {
                        16 => Gcm::A128(Box::new(Aes128Gcm::new_from_slice(&raw).ok()?)),
                        24 => Gcm::A192(Box::new(
                            AesGcm::<aes::Aes192, U12>::new_from_slice(&raw).ok()?,
                        )),
                        _ => Gcm::A256(Box::new(Aes256Gcm::new_from_slice(&raw).ok()?)),
                    }),
                    _ => Cipher::Secretbox(Box::new(XSalsa20Poly1305::new_from_slice(&raw).ok()?)),
                };
                out.push(NamedKey {
                    prefix: format!("k8s:enc:{kind}:v1:{name}:").into_bytes(),
                    cipher,
                });
            }
            Some(Provider::Keys(out))
        }
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill_bytes(&mut b);
    b
}

fn seal(key: &NamedKey, storage_key: &str, data: &[u8]) -> Result<Vec<u8>> {
    let fail = |what: &str| StorageError::Backend(format!("encrypting {storage_key}: {what}"));
    let mut out = key.prefix.clone();
    match &key.cipher {
        Cipher::Cbc(raw) => {
            let iv = random::<16>();
            let ct = match raw.len() {
                16 => cbc::Encryptor::<aes::Aes128>::new_from_slices(raw, &iv)
                    .map(|c| c.encrypt_padded_vec_mut::<Pkcs7>(data)),
                24 => cbc::Encryptor::<aes::Aes192>::new_from_slices(raw, &iv)
                    .map(|c| c.encrypt_padded_vec_mut::<Pkcs7>(data)),
                _ => cbc::Encryptor::<aes::Aes256>::new_from_slices(raw, &iv)
                    .map(|c| c.encrypt_padded_vec_mut::<Pkcs7>(data)),
            }
            .map_err(|_| fail("invalid key length"))?;
            out.extend_from_slice(&iv);
            out.extend_from_slice(&ct);
        }
        Cipher::Gcm(gcm) => {
            let nonce = random::<12>();
            let payload = Payload {
                msg: data,
                aad: storage_key.as_bytes(),
            };
            let n = aes_gcm::Nonce::from_slice(&nonce);
            let ct = match gcm {
                Gcm::A128(c) => c.encrypt(n, payload),
                Gcm::A192(c) => c.encrypt(n, payload),
                Gcm::A256(c) => c.encrypt(n, payload),
            }
            .map_err(|_| fail("AES-GCM seal failed"))?;
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&ct);
        }
        Cipher::Secretbox(c) => {
            let nonce = random::<24>();
            let ct = c
                .encrypt(crypto_secretbox::Nonce::from_slice(&nonce), data)
                .map_err(|_| fail("secretbox seal failed"))?;
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&ct);
        }
    }
    Ok(out)
}

fn open(key: &NamedKey, storage_key: &str, sealed: &[u8]) -> Result<Vec<u8>> {
    let fail = |what: &str| {
        StorageError::Backend(format!("unable to transform key {storage_key:?}: {what}"))
    };
    match &key.cipher {
        Cipher::Cbc(raw) => {
            if sealed.len() < 16 {
                return Err(fail("the stored data was shorter than the required size"));
            }
            let (iv, ct) = sealed.split_at(16);
            if ct.len() % 16 != 0 {
                return Err(fail("the stored data is not a multiple of the block size"));
            }
            let pt = match raw.len() {
                16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(raw, iv)
                    .map(|c| c.decrypt_padded_vec_mut::<Pkcs7>(ct)),
                24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(raw, iv)
                    .map(|c| c.decrypt_padded_vec_mut::<Pkcs7>(ct)),
                _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(raw, iv)
                    .map(|c| c.decrypt_padded_vec_mut::<Pkcs7>(ct)),
            };
            match pt {
                Ok(Ok(pt)) => Ok(pt),
                _ => Err(fail("invalid PKCS7 data (empty or not padded)")),
            }
        }
        Cipher::Gcm(gcm) => {
            if sealed.len() < 12 {
                return Err(fail("the stored data was shorter than the required size"));
            }
            let (nonce, ct) = sealed.split_at(12);
            let payload = Payload {
                msg: ct,
                aad: storage_key.as_bytes(),
            };
            let n = aes_gcm::Nonce::from_slice(nonce);
            match gcm {
                Gcm::A128(c) => c.decrypt(n, payload),
                Gcm::A192(c) => c.decrypt(n, payload),
                Gcm::A256(c) => c.decrypt(n, payload),
            }
            .map_err(|_| fail("cipher: message authentication failed"))
        }
        Cipher::Secretbox(c) => {
            if sealed.len() < 24 {
                return Err(fail("the stored data was shorter than the required size"));
            }
            let (nonce, ct) = sealed.split_at(24);
            c.decrypt(crypto_secretbox::Nonce::from_slice(nonce), ct)
                .map_err(|_| fail("output array was not large enough for encryption"))
        }
    }
}

/// What reading a value found.
struct Opened {
    value: Vec<u8>,
    /// Read by a provider or key other than the one that writes: a rewrite re-encrypts it.
    stale: bool,
}

/// Turns stored values into plain ones and back for one configuration.
struct Transformer {
    config: EncryptionConfig,
    /// Storage prefix (`secrets`, `services/specs`, …) → (group, resource) of the built-in
    /// resources; custom resources are stored under `<group>/<plural>`.
    prefixes: HashMap<&'static str, (&'static str, &'static str)>,
}

/// Wraps a storage backend with encryption at rest.
pub struct EncryptedStorage {
    inner: Arc<dyn Storage>,
    t: Arc<Transformer>,
}

impl EncryptedStorage {
    /// Wraps `inner`. `resources` maps each built-in resource's storage prefix (`secrets`,
    /// `services/specs`, …) to its group and resource name.
    pub fn new(
        inner: Arc<dyn Storage>,
        config: EncryptionConfig,
        resources: impl IntoIterator<Item = (&'static str, (&'static str, &'static str))>,
    ) -> EncryptedStorage {
        let prefixes = resources.into_iter().collect();
        EncryptedStorage {
            inner,
            t: Arc::new(Transformer { config, prefixes }),
        }
    }
}

impl Transformer {
    /// The rule for a storage key (`/registry/<prefix>/…`), if any rule names its resource.
    fn rule(&self, key: &str) -> Option<&Rule> {
        let rest = key.strip_prefix("/registry/")?;
        let mut parts = rest.splitn(3, '/');
        let first = parts.next()?;
        let second = parts.next();
        let (group, resource) = if let Some(second) = second
            && let Some(gr) = self.prefixes.get(&rest[..first.len() + 1 + second.len()])
        {
            *gr
        } else if let Some(gr) = self.prefixes.get(first) {
            *gr
        } else if first.contains('.') {
            // A custom resource: /registry/<group>/<plural>/…
            (first, second?)
        } else {
            ("", first)
        };
        self.config
            .rule_for(group, resource)
            .map(|i| &self.config.rules[i])
    }

    fn seal(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>> {
        match self.rule(key).and_then(|r| r.providers.first()) {
            Some(Provider::Keys(keys)) => match keys.first() {
                Some(k) => seal(k, key, &value),
                None => Ok(value),
            },
            _ => Ok(value),
        }
    }

    fn open(&self, key: &str, value: Vec<u8>) -> Result<Opened> {
        let providers: &[Provider] = self.rule(key).map(|r| &r.providers[..]).unwrap_or(&[]);
        let mut identity_at = None;
        for (pi, p) in providers.iter().enumerate() {
            match p {
                Provider::Identity => {
                    identity_at.get_or_insert(pi);
                }
                Provider::Keys(keys) => {
                    for (ki, k) in keys.iter().enumerate() {
                        if let Some(sealed) = value.strip_prefix(&k.prefix[..]) {
                            return Ok(Opened {
                                value: open(k, key, sealed)?,
                                stale: pi != 0 || ki != 0,
                            });
                        }
                    }
                }
            }
        }
        // Plain data: read by identity (listed, or implied for resources no rule names).
        if value.starts_with(ENCRYPTED) {
            let msg = if providers.is_empty() || identity_at.is_some() {
                "identity transformer tried to read encrypted data"
            } else {
                "no matching prefix found"
            };
            return Err(StorageError::Backend(format!(
                "unable to transform key {key:?}: {msg}"
            )));
        }
        if !providers.is_empty() && identity_at.is_none() {
            return Err(StorageError::Backend(format!(
                "unable to transform key {key:?}: no matching prefix found"
            )));
        }
        Ok(Opened {
            value,
            stale: identity_at.is_some_and(|i| i != 0),
        })
    }

    fn open_kv(&self, mut kv: KeyValue) -> Result<KeyValue> {
        kv.value = self.open(&kv.key, std::mem::take(&mut kv.value))?.value;
        Ok(kv)
    }
}

#[async_trait]
impl Storage for EncryptedStorage {
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision> {
        let sealed = self.t.seal(key, value)?;
        self.inner.create(key, sealed).await
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.inner
            .get(key)
            .await?
            .map(|kv| self.t.open_kv(kv))
            .transpose()
    }

    async fn update(&self, key: &str, expected: Revision, value: Vec<u8>) -> Result<Revision> {
        let sealed = self.t.seal(key, value)?;
        self.inner.update(key, expected, sealed).await
    }

    async fn delete(&self, key: &str, expected: Revision) -> Result<(Revision, KeyValue)> {
        let (rev, kv) = self.inner.delete(key, expected).await?;
        Ok((rev, self.t.open_kv(kv)?))
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        let mut res = self.inner.list(prefix, opts).await?;
        res.items = std::mem::take(&mut res.items)
            .into_iter()
            .map(|kv| self.t.open_kv(kv))
            .collect::<Result<_>>()?;
        Ok(res)
    }

    async fn watch(&self, prefix: &str, after_revision: Revision) -> Result<WatchStream> {
        let stream = self.inner.watch(prefix, after_revision).await?;
        let t = self.t.clone();
        Ok(stream
            .map(move |ev| {
                let ev = ev?;
                Ok(Event {
                    event_type: ev.event_type,
                    kv: t.open_kv(ev.kv)?,
                    prev_kv: ev.prev_kv.map(|kv| t.open_kv(kv)).transpose()?,
                })
            })
            .boxed())
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.inner.current_revision().await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner.compact(revision).await
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        self.inner.compacted_revision().await
    }

    async fn stale(&self, key: &str) -> Result<bool> {
        match self.inner.get(key).await? {
            Some(kv) => Ok(self.t.open(key, kv.value)?.stale),
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::SqliteStorage;

    const K16: &str = "MTIzNDU2Nzg5MDEyMzQ1Ng=="; // 16 bytes
    const K32A: &str = "MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI="; // 32 bytes
    const K32B: &str = "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY="; // 32 bytes
    const K24: &str = "MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0"; // 24 bytes

    fn config(providers: &str) -> EncryptionConfig {
        EncryptionConfig::parse(&format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets, widgets.example.com]\n  providers:\n{providers}"
        ))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn builtin() -> Vec<(&'static str, (&'static str, &'static str))> {
        vec![
            ("secrets", ("", "secrets")),
            ("configmaps", ("", "configmaps")),
            ("services/specs", ("", "services")),
        ]
    }

    fn store(cfg: EncryptionConfig) -> (tempfile::TempDir, Arc<dyn Storage>, EncryptedStorage) {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&dir.path().join("db")).unwrap());
        let enc = EncryptedStorage::new(raw.clone(), cfg, builtin());
        (dir, raw, enc)
    }

    #[tokio::test]
    async fn every_provider_round_trips_and_stores_ciphertext() {
        for (kind, key) in [
            ("aescbc", K16),
            ("aescbc", K24),
            ("aescbc", K32A),
            ("aesgcm", K16),
            ("aesgcm", K24),
            ("aesgcm", K32A),
            ("secretbox", K32A),
        ] {
            let cfg = config(&format!(
                "  - {kind}:\n      keys:\n      - name: key1\n        secret: {key}\n"
            ));
            let (_d, raw, enc) = store(cfg);
            let key_path = "/registry/secrets/default/s1";
            let plain = br#"{"data":{"password":"c2VjcmV0"}}"#.to_vec();
            let rev = enc.create(key_path, plain.clone()).await.unwrap();
            let stored = raw.get(key_path).await.unwrap().unwrap().value;
            let prefix = format!("k8s:enc:{kind}:v1:key1:");
            assert!(stored.starts_with(prefix.as_bytes()), "{kind}");
            assert!(
                !stored.windows(8).any(|w| w == b"c2VjcmV0"),
                "{kind}: plaintext stored"
            );
            assert_eq!(enc.get(key_path).await.unwrap().unwrap().value, plain);
            let listed = enc
                .list("/registry/secrets/", ListOptions::default())
                .await
                .unwrap();
            assert_eq!(listed.items[0].value, plain);
            // Two writes of the same bytes differ (fresh IV/nonce).
            enc.update(key_path, rev, plain.clone()).await.unwrap();
            assert_ne!(raw.get(key_path).await.unwrap().unwrap().value, stored);
            assert!(!enc.stale(key_path).await.unwrap());
            // Other resources stay plain.
            enc.create("/registry/configmaps/default/c", b"{}".to_vec())
                .await
                .unwrap();
            assert_eq!(
                raw.get("/registry/configmaps/default/c")
                    .await
                    .unwrap()
                    .unwrap()
                    .value,
                b"{}"
            );
        }
    }

    #[tokio::test]
    async fn aesgcm_binds_the_value_to_its_key() {
        let (_d, raw, enc) = store(config(&format!(
            "  - aesgcm:\n      keys:\n      - name: k\n        secret: {K32A}\n"
        )));
        enc.create("/registry/secrets/a/x", b"{}".to_vec())
            .await
            .unwrap();
        let sealed = raw
            .get("/registry/secrets/a/x")
            .await
            .unwrap()
            .unwrap()
            .value;
        raw.create("/registry/secrets/b/x", sealed).await.unwrap();
        let err = enc.get("/registry/secrets/b/x").await.unwrap_err();
        assert!(
            err.to_string().contains("message authentication failed"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn rotation_reads_old_keys_marks_them_stale_and_identity_migrates() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&dir.path().join("db")).unwrap());
        let k = "/registry/secrets/default/s";
        // Written plain before encryption was configured.
        let rev = raw.create(k, b"{\"a\":1}".to_vec()).await.unwrap();
        let first = EncryptedStorage::new(
            raw.clone(),
            config(&format!(
                "  - aescbc:\n      keys:\n      - name: key1\n        secret: {K32A}\n  - identity: {{}}\n"
            )),
            builtin(),
        );
        assert_eq!(first.get(k).await.unwrap().unwrap().value, b"{\"a\":1}");
        assert!(
            first.stale(k).await.unwrap(),
            "plain data under an encrypting config"
        );
        first.update(k, rev, b"{\"a\":1}".to_vec()).await.unwrap();
        assert!(!first.stale(k).await.unwrap());
        // key2 first, key1 still readable: stale until rewritten.
        let second = EncryptedStorage::new(
            raw.clone(),
            config(&format!(
                "  - aescbc:\n      keys:\n      - name: key2\n        secret: {K32B}\n      - name: key1\n        secret: {K32A}\n"
            )),
            builtin(),
        );
        let kv = second.get(k).await.unwrap().unwrap();
        assert_eq!(kv.value, b"{\"a\":1}");
        assert!(second.stale(k).await.unwrap());
        second.update(k, kv.mod_revision, kv.value).await.unwrap();
        assert!(!second.stale(k).await.unwrap());
        assert!(
            raw.get(k)
                .await
                .unwrap()
                .unwrap()
                .value
                .starts_with(b"k8s:enc:aescbc:v1:key2:")
        );
        // Without the key: a clear error, never garbage.
        let third = EncryptedStorage::new(
            raw.clone(),
            config(&format!(
                "  - secretbox:\n      keys:\n      - name: key3\n        secret: {K32B}\n"
            )),
            builtin(),
        );
        let err = third.get(k).await.unwrap_err().to_string();
        assert!(err.contains("no matching prefix found"), "{err}");
        // Encryption removed from the configuration: identity refuses encrypted data.
        let plain = EncryptedStorage::new(raw.clone(), config("  - identity: {}\n"), builtin());
        let err = plain.get(k).await.unwrap_err().to_string();
        assert!(
            err.contains("identity transformer tried to read encrypted data"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn watch_events_and_custom_resources_are_decrypted() {
        let (_d, raw, enc) = store(config(&format!(
            "  - secretbox:\n      keys:\n      - name: k\n        secret: {K32A}\n"
        )));
        let mut w = enc.watch("/registry/", 0).await.unwrap();
        let cr = "/registry/example.com/widgets/default/w";
        let rev = enc.create(cr, b"{\"w\":1}".to_vec()).await.unwrap();
        assert!(
            raw.get(cr)
                .await
                .unwrap()
                .unwrap()
                .value
                .starts_with(b"k8s:enc:secretbox:v1:k:")
        );
        enc.delete(cr, rev).await.unwrap();
        let created = w.next().await.unwrap().unwrap();
        assert_eq!(created.kv.value, b"{\"w\":1}");
        let deleted = w.next().await.unwrap().unwrap();
        assert_eq!(deleted.kv.value, b"{\"w\":1}");
    }

    #[tokio::test]
    async fn conformance_holds_through_encryption() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&dir.path().join("db")).unwrap());
        let cfg = EncryptionConfig::parse(&format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: ['*.*']\n  providers:\n  - aesgcm:\n      keys:\n      - name: k\n        secret: {K32A}\n"
        ))
        .unwrap();
        crate::storage::conformance::run_all(Arc::new(EncryptedStorage::new(raw, cfg, builtin())))
            .await;
    }

    #[test]
    fn bad_configurations_get_kubernetes_messages() {
        let parse = |body: &str| {
            EncryptionConfig::parse(&format!(
                "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n{body}"
            ))
            .err()
            .unwrap_or_default()
        };
        assert_eq!(
            parse("resources: []"),
            "resources: Required value: at least one resources is required"
        );
        assert_eq!(
            parse(
                "resources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - name: k\n        secret: cGFzc3dvcmQK\n"
            ),
            "resources[0].providers[0].aescbc.keys[0].secret: Invalid value: \"REDACTED\": secret is not of the expected length, got 9, expected one of [16 24 32]"
        );
        assert_eq!(
            parse(
                "resources:\n- resources: [secrets]\n  providers:\n  - secretbox:\n      keys:\n      - name: k\n        secret: P@ssword\n"
            ),
            "resources[0].providers[0].secretbox.keys[0].secret: Invalid value: \"REDACTED\": secrets must be base64 encoded"
        );
        let two = parse(&format!(
            "resources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - name: k\n        secret: {K32A}\n    identity: {{}}\n"
        ));
        assert!(
            two.contains("more than one provider specified in a single element, should split into different list elements"),
            "{two}"
        );
        let none = parse("resources:\n- resources: [secrets]\n  providers:\n  - {}\n");
        assert!(none.contains("provider does not contain any of the expected providers: KMS, AESGCM, AESCBC, Secretbox, Identity"), "{none}");
        let star = parse("resources:\n- resources: ['*']\n  providers:\n  - identity: {}\n");
        assert!(
            star.contains("use '*.' to encrypt all the resources"),
            "{star}"
        );
        let keys = parse(
            "resources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys: []\n",
        );
        assert_eq!(
            keys,
            "resources[0].providers[0].aesgcm.keys: Required value: at least one keys is required"
        );
        let kind = EncryptionConfig::parse("apiVersion: v1\nkind: Secret\n")
            .err()
            .unwrap();
        assert!(kind.contains("EncryptionConfiguration"), "{kind}");
        let kms = parse(
            "resources:\n- resources: [secrets]\n  providers:\n  - kms: {name: x, endpoint: 'unix:///k.sock'}\n",
        );
        assert!(kms.contains("KMS providers are not supported"), "{kms}");
    }
}
