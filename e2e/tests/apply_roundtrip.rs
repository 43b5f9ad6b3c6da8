//! kubectl apply round trips against the real apiserver binary: client-side apply (strategic
//! merge patch, OpenAPI v2 protobuf for 1.27), server-side apply with conflicts and
//! `--force-conflicts`, kubectl 1.33's protobuf create commands, kube-rs `Patch::Apply`, and
//! malformed patches.

use anyhow::Context;
use e2e::{ApiServer, Backend, Kubectl, KubectlOutput};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

/// A Deployment with two containers, labels `app` and `tier`.
const V1: &str = include_str!("../testdata/apply-web-v1.yaml");

/// Edited: label `tier` removed, env `Y` removed, image changed, containers reordered, port added.
const V2: &str = include_str!("../testdata/apply-web-v2.yaml");

/// `kubectl apply --server-side -n <ns> <extra> -f -` with `doc` on stdin.
fn apply_ssa(k: &Kubectl, ns: &str, extra: &[&str], doc: &str) -> anyhow::Result<KubectlOutput> {
    let mut args = vec!["apply", "--server-side", "-n", ns];
    args.extend_from_slice(extra);
    args.extend(["-f", "-"]);
    k.run_stdin(&args, doc)
}

async fn deployment(server: &ApiServer, ns: &str) -> anyhow::Result<Value> {
    let api: Api<Deployment> = Api::namespaced(server.client().await?, ns);
    Ok(serde_json::to_value(api.get("web").await?)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver binary and kubectl; run via .ci/test"]
async fn apply_client_side_round_trip_kubectl_127_130_133() -> anyhow::Result<()> {
    let server = ApiServer::start(Backend::Sqlite).await?;
    for minor in [27, 30, 33] {
        let k = server.kubectl(minor);
        let ns = format!("csa{minor}");
        k.run(&["create", "namespace", &ns])?.success()?;
        // Default validation: 1.27 reads /openapi/v2 (protobuf), later ones /openapi/v3.
        k.run_stdin(&["apply", "-n", &ns, "-f", "-"], V1)?
            .success()?;
        k.run_stdin(&["apply", "-n", &ns, "-f", "-"], V2)?
            .success()?;
        let d = deployment(&server, &ns).await?;
        assert_eq!(
            d["metadata"]["labels"],
            json!({"app": "web"}),
            "kubectl 1.{minor}"
        );
        let cs = &d["spec"]["template"]["spec"]["containers"];
        let names: Vec<&str> = cs
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(
            names,
            ["b", "a"],
            "kubectl 1.{minor}: containers reordered as in the file"
        );
        assert_eq!(cs[1]["image"], "nginx:2");
        assert_eq!(cs[1]["env"], json!([{"name": "X", "value": "1"}]));
        assert_eq!(
            cs[1]["ports"],
            json!([{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 443, "protocol": "TCP"}])
        );
        assert_eq!(cs[0]["image"], "busybox");
        assert_eq!(d["spec"]["replicas"], 2);
        assert_eq!(d["metadata"]["generation"], 2);
        // Nothing left to change.
        let diff = k.run_stdin(&["diff", "-n", &ns, "-f", "-"], V2)?;
        assert_eq!(
            diff.code, 0,
            "kubectl 1.{minor} diff: {} {}",
            diff.stdout, diff.stderr
        );
        let diff = k.run_stdin(&["diff", "-n", &ns, "-f", "-"], V1)?;
        assert_eq!(
            diff.code, 1,
            "kubectl 1.{minor} diff shows changes: {}",
            diff.stderr
        );
        assert!(diff.stdout.contains("tier: front"), "{}", diff.stdout);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver binary and kubectl; run via .ci/test"]
async fn apply_server_side_conflicts_and_force() -> anyhow::Result<()> {
    let server = ApiServer::start(Backend::Sqlite).await?;
    for minor in [27, 33] {
        let k = server.kubectl(minor);
        let ns = format!("ssa{minor}");
        k.run(&["create", "namespace", &ns])?.success()?;
        apply_ssa(&k, &ns, &[], V1)?.success()?;
        let other = V2.replace("replicas: 2", "replicas: 5");
        let out = apply_ssa(&k, &ns, &["--field-manager=other"], &other)?.failure()?;
        assert!(
            out.stderr
                .contains("Apply failed with 2 conflicts: conflicts with \"kubectl\":"),
            "kubectl 1.{minor}: {}",
            out.stderr
        );
        assert!(out.stderr.contains("- .spec.replicas"), "{}", out.stderr);
        apply_ssa(
            &k,
            &ns,
            &["--force-conflicts", "--field-manager=other"],
            &other,
        )?
        .success()?;
        let d = deployment(&server, &ns).await?;
        assert_eq!(d["spec"]["replicas"], 5);
        let managers: Vec<(String, String)> = d["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["manager"].as_str().unwrap_or("").to_string(),
                    e["operation"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        assert!(
            managers.contains(&("other".into(), "Apply".into())),
            "{managers:?}"
        );
        assert!(
            managers.contains(&("kubectl".into(), "Apply".into())),
            "{managers:?}"
        );
        // kubectl owns the label `tier` alone; dropping it from its config removes it (forced:
        // its config still sets replicas and the image, which "other" now owns).
        let v1_no_tier = V1.replace("app: web, tier: front", "app: web");
        let out = apply_ssa(&k, &ns, &[], &v1_no_tier)?.failure()?;
        assert!(
            out.stderr.contains("conflicts with \"other\":"),
            "{}",
            out.stderr
        );
        apply_ssa(&k, &ns, &["--force-conflicts"], &v1_no_tier)?
            .success()
            .context("forced apply by kubectl")?;
        let d = deployment(&server, &ns).await?;
        assert_eq!(d["metadata"]["labels"], json!({"app": "web"}));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver binary and kubectl; run via .ci/test"]
async fn apply_protobuf_create_commands_kubectl_133() -> anyhow::Result<()> {
    let server = ApiServer::start(Backend::Sqlite).await?;
    let k = server.kubectl(33);
    k.run(&["create", "namespace", "pb"])?.success()?;
    for args in [
        vec![
            "create",
            "deployment",
            "web",
            "--image=nginx",
            "--replicas=0",
        ],
        vec!["create", "configmap", "c", "--from-literal=a=b"],
        vec!["create", "secret", "generic", "s", "--from-literal=p=q"],
        vec!["create", "serviceaccount", "sa"],
        vec!["create", "role", "r", "--verb=get", "--resource=pods"],
        vec![
            "create",
            "rolebinding",
            "rb",
            "--role=r",
            "--serviceaccount=pb:sa",
        ],
    ] {
        let mut a = vec!["-n", "pb"];
        a.extend(args);
        k.run(&a)?.success()?;
    }
    let d = deployment(&server, "pb").await?;
    assert_eq!(
        d["spec"]["replicas"], 0,
        "a pointer zero survives protobuf decoding"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx"
    );
    let out = k
        .run(&["-n", "pb", "get", "secret", "s", "-o", "jsonpath={.data.p}"])?
        .success()?;
    assert_eq!(out.stdout, "cQ==");
    let out = k
        .run(&[
            "-n",
            "pb",
            "get",
            "role",
            "r",
            "-o",
            "jsonpath={.rules[0].verbs[0]}",
        ])?
        .success()?;
    assert_eq!(out.stdout, "get");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver binary; run via .ci/test"]
async fn apply_kube_rs_patch_apply() -> anyhow::Result<()> {
    let server = ApiServer::start(Backend::Sqlite).await?;
    let api: Api<ConfigMap> = Api::namespaced(server.client().await?, "default");
    let pp = PatchParams::apply("mgr");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}});
    let created = api.patch("c", &pp, &Patch::Apply(&cm)).await?;
    assert_eq!(created.data.as_ref().map(|d| d.len()), Some(2));
    let mf = created.metadata.managed_fields.unwrap_or_default();
    assert_eq!(mf.len(), 1);
    assert_eq!(mf[0].manager.as_deref(), Some("mgr"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
    let after = api.patch("c", &pp, &Patch::Apply(&cm)).await?;
    assert_eq!(
        after.data,
        Some([("a".to_string(), "1".to_string())].into())
    );
    // Another manager changing a.
    let cm2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "2"}});
    let err = api
        .patch("c", &PatchParams::apply("other"), &Patch::Apply(&cm2))
        .await
        .expect_err("conflict");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert_eq!(
                s.message,
                "Apply failed with 1 conflict: conflict with \"mgr\": .data.a"
            );
        }
        e => anyhow::bail!("unexpected error {e}"),
    }
    let forced = api
        .patch(
            "c",
            &PatchParams::apply("other").force(),
            &Patch::Apply(&cm2),
        )
        .await?;
    assert_eq!(
        forced.data,
        Some([("a".to_string(), "2".to_string())].into())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver binary; run via .ci/test"]
async fn apply_malformed_patches_are_4xx() -> anyhow::Result<()> {
    let server = ApiServer::start(Backend::Sqlite).await?;
    let api: Api<ConfigMap> = Api::namespaced(server.client().await?, "default");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
    api.patch("c", &PatchParams::apply("mgr"), &Patch::Apply(&cm))
        .await?;
    let path = "/api/v1/namespaces/default/configmaps/c";
    let smp = "application/strategic-merge-patch+json";
    for (ct, body, want) in [
        (smp, "{not json", "error decoding patch"),
        (
            smp,
            r#"{"metadata":{"$setElementOrder/labels":"x"}}"#,
            "must be a list",
        ),
        (
            smp,
            r#"{"metadata":{"$patch":"explode"}}"#,
            "unknown patch type",
        ),
        (
            "application/apply-patch+yaml",
            "- a\n- b\n",
            "not an object",
        ),
        ("application/vnd.kubernetes.protobuf", "k9s\0", "magic"),
    ] {
        let method = if ct.contains("protobuf") {
            "POST"
        } else {
            "PATCH"
        };
        let p = if method == "POST" {
            "/api/v1/namespaces/default/configmaps"
        } else {
            path
        };
        let (code, body) = server
            .raw(method, p, Some(ct), body.as_bytes().to_vec())
            .await?;
        let status: Value = serde_json::from_slice(&body)?;
        assert!((400..500).contains(&code), "{ct} {code} {status}");
        assert!(
            status["message"].as_str().unwrap_or("").contains(want),
            "{ct}: {status}"
        );
    }
    // Merge key missing from a Deployment container.
    let apps: Api<Deployment> = Api::namespaced(server.client().await?, "default");
    let d: Deployment = serde_yaml::from_str(V1)?;
    apps.create(&Default::default(), &d).await?;
    let (code, body) = server
        .raw(
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/web",
            Some(smp),
            br#"{"spec":{"template":{"spec":{"containers":[{"image":"x"}]}}}}"#.to_vec(),
        )
        .await?;
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("does not contain declared merge key: name"));
    Ok(())
}
