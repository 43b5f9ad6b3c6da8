//! Secrets at rest (issue 18, point 8): `--encryption-provider-config` on SQLite and on a real
//! etcd, driven by the real kubectl.
//!
//! A Secret created with an `aescbc` key is stored as `k8s:enc:aescbc:v1:key1:…` (its data
//! nowhere in the store in plain form) and reads back; ConfigMaps (not named) stay plain.
//! Rotation as Kubernetes documents it: key2 first with key1 still listed, restart,
//! `kubectl get secrets -A -o json | kubectl replace -f -` rewrites every Secret with key2 (even
//! unchanged ones), then key1 is dropped and everything still reads. A bad configuration stops
//! the apiserver at start with Kubernetes' field error. On SQLite the data dir is 0700 and the
//! database 0600.
//!
//! Needs the built apiserver binary and (for the etcd run) Debian's etcd-server.
use std::path::Path;

use anyhow::{Context, bail};
use e2e::{ApiServer, Backend, Kubectl};

const KEY1: &str = "MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI=";
const KEY2: &str = "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY=";
/// base64 of the Secret's value, as it would appear in a plain stored object.
const PLAIN_B64: &str = "aHVudGVyMi1wbGFpbnRleHQ=";

fn config(dir: &Path, name: &str, keys: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut text = String::from(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n",
    );
    for (n, s) in keys {
        text.push_str(&format!("      - name: {n}\n        secret: {s}\n"));
    }
    text.push_str("  - identity: {}\n");
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path.display().to_string())
}

/// The stored bytes of `key`: from etcd directly, or the SQLite files' bytes (which hold every
/// revision not yet compacted: `contains` checks then cover history too).
async fn stored(server: &ApiServer, key: &str) -> anyhow::Result<Vec<u8>> {
    match server.etcd() {
        Some(etcd) => {
            let mut c = etcd_client::Client::connect([etcd.endpoint()], None).await?;
            let resp = c.get(key, None).await?;
            Ok(resp
                .kvs()
                .first()
                .map(|kv| kv.value().to_vec())
                .unwrap_or_default())
        }
        None => {
            let mut all = Vec::new();
            for f in ["state.db", "state.db-wal"] {
                if let Ok(b) = std::fs::read(server.data_dir().join(f)) {
                    all.extend(b);
                }
            }
            Ok(all)
        }
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn encryption(backend: Backend) -> anyhow::Result<()> {
    let conf_dir = tempfile::tempdir()?;
    let one = config(conf_dir.path(), "one.yaml", &[("key1", KEY1)])?;
    let rotate = config(
        conf_dir.path(),
        "rotate.yaml",
        &[("key2", KEY2), ("key1", KEY1)],
    )?;
    let two = config(conf_dir.path(), "two.yaml", &[("key2", KEY2)])?;
    let mut server = ApiServer::start_with(
        e2e::bin_dir().join("apiserver"),
        backend,
        &["--encryption-provider-config", &one],
    )
    .await?;
    let k: Kubectl = server.kubectl(33);
    k.ok(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=password=hunter2-plaintext",
    ])?;
    k.ok(&[
        "create",
        "configmap",
        "plain",
        "--from-literal=note=visible-in-store",
    ])?;
    let key = "/registry/secrets/default/db";
    let raw = stored(&server, key).await?;
    anyhow::ensure!(
        contains(&raw, "k8s:enc:aescbc:v1:key1:"),
        "the Secret is not stored with key1"
    );
    anyhow::ensure!(
        !contains(&raw, PLAIN_B64),
        "the Secret's data is stored in plain form"
    );
    let cm = stored(&server, "/registry/configmaps/default/plain").await?;
    anyhow::ensure!(contains(&cm, "visible-in-store"), "ConfigMaps stay plain");
    let read = k.ok(&["get", "secret", "db", "-o", "jsonpath={.data.password}"])?;
    assert_eq!(read.trim(), PLAIN_B64);

    if backend == Backend::Sqlite {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| -> anyhow::Result<u32> {
            Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
        };
        assert_eq!(mode(server.data_dir())?, 0o700, "data dir");
        assert_eq!(
            mode(&server.data_dir().join("state.db"))?,
            0o600,
            "state.db"
        );
    }

    // Rotation: key2 writes, key1 still reads; a replace of unchanged Secrets rewrites them.
    server.set_extra_args(&["--encryption-provider-config", &rotate]);
    server.start_again().await?;
    let rv_before = k.ok(&[
        "get",
        "secret",
        "db",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ])?;
    let all = k.ok(&["get", "secrets", "-A", "-o", "json"])?;
    k.ok_stdin(&["replace", "-f", "-"], &all)?;
    let rv_after = k.ok(&[
        "get",
        "secret",
        "db",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ])?;
    anyhow::ensure!(
        rv_before != rv_after,
        "replace of an unchanged Secret stored with an old key must rewrite it"
    );
    if backend == Backend::Etcd {
        let raw = stored(&server, key).await?;
        anyhow::ensure!(
            raw.starts_with(b"k8s:enc:aescbc:v1:key2:"),
            "after the rewrite the Secret is stored with key2"
        );
    } else {
        anyhow::ensure!(contains(
            &stored(&server, key).await?,
            "k8s:enc:aescbc:v1:key2:"
        ));
    }
    // A second replace changes nothing (no longer stale).
    let all = k.ok(&["get", "secrets", "-A", "-o", "json"])?;
    k.ok_stdin(&["replace", "-f", "-"], &all)?;
    let rv_again = k.ok(&[
        "get",
        "secret",
        "db",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ])?;
    assert_eq!(
        rv_after, rv_again,
        "no rewrite once stored with the current key"
    );

    // key1 dropped: everything still reads.
    server.set_extra_args(&["--encryption-provider-config", &two]);
    server.start_again().await?;
    let read = k.ok(&["get", "secret", "db", "-o", "jsonpath={.data.password}"])?;
    assert_eq!(read.trim(), PLAIN_B64);
    k.ok(&["get", "secrets", "-A"])?;

    // A bad configuration is refused at start, with the field and the reason.
    let bad = conf_dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - name: k\n        secret: cGFzc3dvcmQK\n",
    )?;
    let bad = bad.display().to_string();
    server.set_extra_args(&["--encryption-provider-config", &bad]);
    match server.start_again().await {
        Ok(()) => bail!("the apiserver started with a bad encryption configuration"),
        Err(e) => {
            let msg = format!("{e:#}");
            anyhow::ensure!(
                msg.contains("resources[0].providers[0].aescbc.keys[0].secret: Invalid value: \"REDACTED\": secret is not of the expected length, got 9, expected one of [16 24 32]"),
                "unclear refusal: {msg}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the built apiserver binary"]
async fn secrets_are_encrypted_at_rest_on_sqlite() -> anyhow::Result<()> {
    encryption(Backend::Sqlite).await.context("sqlite")
}

#[tokio::test]
#[ignore = "needs the built apiserver binary and etcd"]
async fn secrets_are_encrypted_at_rest_on_etcd() -> anyhow::Result<()> {
    encryption(Backend::Etcd).await.context("etcd")
}
