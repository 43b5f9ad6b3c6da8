//! `lotse backup` of a running apiserver on SQLite, and on a real etcd (a snapshot through its
//! maintenance API), while a writer keeps creating objects, then `lotse restore` into a new data
//! dir (for etcd: a new etcd data dir made as `etcdctl snapshot restore` does, and an etcd
//! started on it): the restored apiserver serves every object that existed when the backup
//! began (same uid, data and resourceVersion), nothing it never had, the same cluster CA, and a
//! watch from its current revision sees new writes.
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use e2e::{ApiServer, Backend, Etcd, bin_dir};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};

fn lotse(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin_dir().join("lotse"))
        .args(args)
        .output()
        .context("running lotse")?;
    anyhow::ensure!(
        out.status.success(),
        "lotse {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// name → (uid, resourceVersion, data) of every ConfigMap in `ns`.
async fn snapshot(
    api: &Api<ConfigMap>,
) -> anyhow::Result<BTreeMap<String, (String, String, String)>> {
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|c| {
            (
                c.metadata.name.clone().unwrap_or_default(),
                (
                    c.metadata.uid.clone().unwrap_or_default(),
                    c.metadata.resource_version.clone().unwrap_or_default(),
                    serde_json::to_string(&c.data).unwrap_or_default(),
                ),
            )
        })
        .collect())
}

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {"k": name},
    }))
    .unwrap_or_default()
}

#[tokio::test]
#[ignore = "needs the built apiserver and lotse binaries"]
async fn backup_while_writing_then_restore_serves_the_same_objects() -> anyhow::Result<()> {
    backup_while_writing_then_restore(Backend::Sqlite).await
}

#[tokio::test]
#[ignore = "needs the built apiserver and lotse binaries, etcd and etcdctl"]
async fn etcd_backup_while_writing_then_restore_serves_the_same_objects() -> anyhow::Result<()> {
    backup_while_writing_then_restore(Backend::Etcd).await
}

async fn backup_while_writing_then_restore(backend: Backend) -> anyhow::Result<()> {
    let a = ApiServer::start(backend).await?;
    let etcd_a: Vec<String> = match a.etcd() {
        Some(etcd) => vec!["--etcd-servers".into(), etcd.endpoint().into()],
        None => Vec::new(),
    };
    let api: Api<ConfigMap> = Api::namespaced(a.client().await?, "default");
    for i in 0..200 {
        api.create(&PostParams::default(), &cm(&format!("before-{i}")))
            .await?;
    }
    let before = snapshot(&api).await?;

    // A writer keeps creating objects while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let api = api.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 2000 {
                let _ = api
                    .create(&PostParams::default(), &cm(&format!("during-{i}")))
                    .await;
                i += 1;
            }
        })
    };
    let tmp = tempfile::tempdir()?;
    let file = tmp.path().join("cluster.tar.gz");
    let data_a = a.data_dir().to_string_lossy().into_owned();
    let out = tokio::task::spawn_blocking({
        let file = file.clone();
        move || {
            let mut args = vec!["backup", "--data-dir", &data_a];
            args.extend(etcd_a.iter().map(String::as_str));
            let file = file.to_string_lossy();
            args.push(&file);
            lotse(&args)
        }
    })
    .await??;
    assert!(out.contains("backup of"), "{out}");
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    let after = snapshot(&api).await?;

    // Restoring into a directory that is not empty is refused.
    let busy = tmp.path().join("busy");
    std::fs::create_dir_all(busy.join("x"))?;
    let refused = Command::new(bin_dir().join("lotse"))
        .args([
            "restore",
            "--data-dir",
            &busy.to_string_lossy(),
            &file.to_string_lossy(),
        ])
        .output()?;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not empty"));

    // A second apiserver on the restored data dir.
    let mut b = ApiServer::start(Backend::Sqlite).await?;
    b.stop();
    for e in std::fs::read_dir(b.data_dir())? {
        let p = e?.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    let data_b = b.data_dir().to_string_lossy().into_owned();
    let peer = format!("http://127.0.0.1:{}", e2e::free_port()?);
    let _etcd_b = if backend == Backend::Etcd {
        let out = lotse(&[
            "restore",
            "--data-dir",
            &data_b,
            "--etcd-name",
            "restored",
            "--etcd-initial-cluster",
            &format!("restored={peer}"),
            "--etcd-initial-advertise-peer-urls",
            &peer,
            &file.to_string_lossy(),
        ])?;
        assert!(out.contains("start etcd with"), "{out}");
        let etcd = Etcd::start_member(Some(&b.data_dir().join("etcd")), "restored", &peer).await?;
        b.set_extra_args(&["--etcd-servers", etcd.endpoint()]);
        Some(etcd)
    } else {
        lotse(&["restore", "--data-dir", &data_b, &file.to_string_lossy()])?;
        None
    };
    b.start_again().await?;
    assert_eq!(
        std::fs::read(a.data_dir().join("pki/ca.crt"))?,
        std::fs::read(b.data_dir().join("pki/ca.crt"))?,
        "the restored cluster keeps its CA"
    );
    let api_b: Api<ConfigMap> = Api::namespaced(b.client().await?, "default");
    let restored = snapshot(&api_b).await?;
    // Everything from before the backup, exactly; the rest only as A had it.
    for (name, v) in &before {
        assert_eq!(restored.get(name), Some(v), "{name}");
    }
    for (name, v) in &restored {
        assert_eq!(after.get(name), Some(v), "{name} is as A served it");
    }
    // Writes during the backup are either all there up to some point or not: the copy is one
    // transaction, so the restored `during-*` objects are a prefix of the writer's sequence.
    let during: Vec<usize> = restored
        .keys()
        .filter_map(|n| n.strip_prefix("during-")?.parse().ok())
        .collect();
    if let Some(max) = during.iter().max() {
        assert_eq!(during.len(), max + 1, "a prefix of the writes: {during:?}");
    }

    // A watch from the restored cluster's current revision sees new writes.
    let rv = api_b
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut stream = api_b
        .watch(&WatchParams::default().timeout(10), &rv)
        .await?
        .boxed();
    api_b
        .create(&PostParams::default(), &cm("after-restore"))
        .await?;
    let ev = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
        .await?
        .context("watch ended")??;
    match ev {
        WatchEvent::Added(c) => assert_eq!(c.metadata.name.as_deref(), Some("after-restore")),
        other => anyhow::bail!("unexpected event {other:?}"),
    }
    Ok(())
}
