//! Identity and access against the real apiserver with real kubectl (1.31, which sends JSON
//! bodies for `create token` and `auth can-i`): the entenhausen seed scenario, quota, pod
//! security, impersonation and token revocation.

use e2e::{ApiServer, Backend, Kubectl};

const DONALD: &str = "system:serviceaccount:entenhausen:donald";

fn ok(k: &Kubectl, args: &[&str]) -> String {
    k.ok(args).unwrap_or_else(|e| panic!("{e:#}"))
}

fn fails(k: &Kubectl, args: &[&str]) -> String {
    k.fails(args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `args` prefixed with `--token <token>`.
fn with_token<'a>(token: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    ["--token", token]
        .into_iter()
        .chain(args.iter().copied())
        .collect()
}

/// Whether `kubectl auth can-i --list` output has a row for `resource` (with its trailing
/// space) that lists `verb`.
fn grants(list: &str, resource: &str, verb: &str) -> bool {
    list.lines()
        .any(|l| l.starts_with(resource) && l.contains(verb))
}

/// Runs `f` up to 50 times, 100 ms apart, until `done` accepts its output (changes reach
/// the authorizer and quota asynchronously); returns the last output.
fn retry(mut f: impl FnMut() -> String, done: impl Fn(&str) -> bool) -> String {
    let mut out = String::new();
    for _ in 0..50 {
        out = f();
        if done(&out) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver binary; run via .ci/test"]
async fn entenhausen_seed_scenario() {
    let api = ApiServer::start(Backend::Sqlite).await.expect("apiserver");
    let k = api.kubectl(31);
    ok(&k, &["create", "namespace", "entenhausen"]);
    ok(
        &k,
        &["create", "serviceaccount", "donald", "-n", "entenhausen"],
    );
    ok(
        &k,
        &[
            "create",
            "rolebinding",
            "donald-edit",
            "--clusterrole=edit",
            "--serviceaccount=entenhausen:donald",
            "-n",
            "entenhausen",
        ],
    );
    let token = ok(
        &k,
        &[
            "create",
            "token",
            "donald",
            "-n",
            "entenhausen",
            "--duration=1h",
        ],
    )
    .trim()
    .to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    let who = ok(&k, &with_token(&token, &["auth", "whoami"]));
    assert!(who.contains(DONALD), "{who}");
    assert!(who.contains("system:serviceaccounts:entenhausen"), "{who}");

    ok(
        &k,
        &with_token(
            &token,
            &[
                "create",
                "deployment",
                "web",
                "--image=nginx",
                "-n",
                "entenhausen",
            ],
        ),
    );
    ok(
        &k,
        &with_token(
            &token,
            &[
                "scale",
                "deployment",
                "web",
                "--replicas=3",
                "-n",
                "entenhausen",
            ],
        ),
    );
    let pods = ok(
        &k,
        &with_token(&token, &["get", "pods", "-n", "entenhausen"]),
    );
    assert!(!pods.contains("Forbidden"), "{pods}");

    let err = fails(
        &k,
        &with_token(&token, &["get", "pods", "-n", "kube-system"]),
    );
    assert!(
        err.contains(&format!(
            "Error from server (Forbidden): pods is forbidden: User \"{DONALD}\" cannot list resource \"pods\" in API group \"\" in the namespace \"kube-system\""
        )),
        "{err}"
    );
    let err = fails(
        &k,
        &with_token(
            &token,
            &[
                "create",
                "clusterrolebinding",
                "mine",
                "--clusterrole=cluster-admin",
                "--serviceaccount=entenhausen:donald",
            ],
        ),
    );
    assert!(
        err.contains("clusterrolebindings.rbac.authorization.k8s.io is forbidden"),
        "{err}"
    );
    // Binding himself cluster-admin in his namespace.
    let mine = with_token(
        &token,
        &[
            "create",
            "rolebinding",
            "mine",
            "--clusterrole=cluster-admin",
            "--serviceaccount=entenhausen:donald",
            "-n",
            "entenhausen",
        ],
    );
    let err = fails(&k, &mine);
    assert!(
        err.contains("cannot create resource \"rolebindings\""),
        "{err}"
    );

    // With admin in his namespace he may create bindings, but not to more than he holds.
    ok(
        &k,
        &[
            "create",
            "rolebinding",
            "donald-admin",
            "--clusterrole=admin",
            "--serviceaccount=entenhausen:donald",
            "-n",
            "entenhausen",
        ],
    );
    let err = retry(
        || fails(&k, &mine),
        |err| err.contains("attempting to grant RBAC permissions not currently held"),
    );
    // Kubernetes' exact wording (rbac/validation.ConfirmNoEscalation), missing rules sorted.
    let want = format!(
        "rolebindings.rbac.authorization.k8s.io \"mine\" is forbidden: user \"{DONALD}\" (groups=[\"system:serviceaccounts\" \"system:serviceaccounts:entenhausen\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}}\n{{NonResourceURLs:[\"*\"], Verbs:[\"*\"]}}\n"
    );
    assert!(err.contains(&want), "want {want:?}\ngot {err:?}");

    // `auth can-i --list` with donald's own token shows what he holds there.
    let own = ok(
        &k,
        &with_token(&token, &["auth", "can-i", "--list", "-n", "entenhausen"]),
    );
    for (resource, verb) in [
        ("deployments.apps ", "create"),
        ("deployments.apps/scale ", "update"),
        ("pods ", "list"),
        ("rolebindings.rbac.authorization.k8s.io ", "create"),
        ("selfsubjectreviews.authentication.k8s.io ", "create"),
    ] {
        assert!(grants(&own, resource, verb), "{resource}{verb}: {own}");
    }
    assert!(
        !own.lines().any(|l| l.starts_with("*.* ")),
        "no cluster-admin: {own}"
    );

    // `kubectl auth can-i <args> --as=<donald> -n <ns>` (exit code 0 only for "yes").
    let as_donald = format!("--as={DONALD}");
    let can_i = |k: &Kubectl, args: &[&str], ns: &str| {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        all.extend([as_donald.as_str(), "-n", ns]);
        k.run(&all).expect("kubectl")
    };
    let list = can_i(&k, &["--list"], "entenhausen")
        .success()
        .expect("can-i --list")
        .stdout;
    assert!(grants(&list, "deployments.apps ", "create"), "{list}");
    assert!(grants(&list, "pods ", "list"), "{list}");
    let yes = can_i(&k, &["list", "pods"], "entenhausen");
    assert_eq!(yes.code, 0, "{}", yes.stderr);
    assert_eq!(yes.stdout.trim(), "yes");
    let no = can_i(&k, &["list", "pods"], "kube-system");
    assert_eq!(no.stdout.trim(), "no");

    // kubectl 1.33 sends TokenRequest and access reviews as protobuf.
    let k33 = api.kubectl(33);
    let token33 = ok(&k33, &["create", "token", "donald", "-n", "entenhausen"])
        .trim()
        .to_string();
    assert!(ok(&k33, &["--token", &token33, "auth", "whoami"]).contains(DONALD));
    let yes = can_i(&k33, &["create", "deployments"], "entenhausen");
    assert_eq!(yes.code, 0, "{}", yes.stderr);
    assert_eq!(yes.stdout.trim(), "yes");
    let list33 = can_i(&k33, &["--list"], "entenhausen")
        .success()
        .expect("can-i --list")
        .stdout;
    assert!(grants(&list33, "deployments.apps ", ""), "{list33}");

    // Impersonation needs the impersonate verb.
    let err = fails(
        &k,
        &with_token(
            &token,
            &["get", "pods", "-n", "entenhausen", "--as=dagobert"],
        ),
    );
    assert!(
        err.contains(&format!("users \"dagobert\" is forbidden: User \"{DONALD}\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope")),
        "{err}"
    );

    // Garbage and deleted accounts get 401.
    let err = fails(
        &k,
        &["--token", "not.a.token", "get", "pods", "-n", "entenhausen"],
    );
    assert!(err.contains("Unauthorized"), "{err}");
    ok(
        &k,
        &["delete", "serviceaccount", "donald", "-n", "entenhausen"],
    );
    let err = retry(
        || {
            k.run(&with_token(&token, &["get", "pods", "-n", "entenhausen"]))
                .expect("kubectl")
                .stderr
        },
        |err| err.contains("Unauthorized"),
    );
    assert!(err.contains("Unauthorized"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver binary; run via .ci/test"]
async fn quota_and_pod_security() {
    let api = ApiServer::start(Backend::Sqlite).await.expect("apiserver");
    let k = api.kubectl(31);
    ok(&k, &["create", "namespace", "klasse"]);
    ok(
        &k,
        &[
            "create",
            "quota",
            "class-quota",
            "--hard=requests.cpu=2",
            "-n",
            "klasse",
        ],
    );
    let pod = |name: &str| {
        format!(
            "{{\"spec\":{{\"containers\":[{{\"name\":\"{name}\",\"image\":\"busybox\",\"resources\":{{\"requests\":{{\"cpu\":\"1\"}}}}}}]}}}}"
        )
    };
    for name in ["p1", "p2"] {
        ok(
            &k,
            &[
                "run",
                name,
                "--image=busybox",
                "-n",
                "klasse",
                &format!("--overrides={}", pod(name)),
            ],
        );
    }
    let err = fails(
        &k,
        &[
            "run",
            "p3",
            "--image=busybox",
            "-n",
            "klasse",
            &format!("--overrides={}", pod("p3")),
        ],
    );
    assert!(
        err.contains("pods \"p3\" is forbidden: exceeded quota: class-quota, requested: requests.cpu=1, used: requests.cpu=2, limited: requests.cpu=2"),
        "{err}"
    );
    let used_cpu = [
        "get",
        "quota",
        "class-quota",
        "-n",
        "klasse",
        "-o",
        "jsonpath={.status.used.requests\\.cpu}",
    ];
    let used = ok(&k, &used_cpu);
    assert_eq!(used.trim(), "2");
    let pods = ok(&k, &["get", "pods", "-n", "klasse", "-o", "name"]);
    assert!(!pods.contains("p3"), "nothing written on rejection: {pods}");
    // Deleting a pod frees its share.
    ok(
        &k,
        &[
            "delete",
            "pod",
            "p1",
            "-n",
            "klasse",
            "--wait=false",
            "--grace-period=0",
            "--force",
        ],
    );
    let used = retry(|| ok(&k, &used_cpu), |used| used.trim() == "1");
    assert_eq!(used.trim(), "1");

    ok(&k, &["create", "namespace", "secure"]);
    ok(
        &k,
        &[
            "label",
            "namespace",
            "secure",
            "pod-security.kubernetes.io/enforce=restricted",
        ],
    );
    let err = fails(
        &k,
        &[
            "run",
            "priv",
            "--image=nginx",
            "-n",
            "secure",
            "--privileged",
        ],
    );
    assert!(
        err.contains("pods \"priv\" is forbidden: violates PodSecurity \"restricted:latest\": privileged (container \"priv\" must not set securityContext.privileged=true), allowPrivilegeEscalation != false (container \"priv\" must set securityContext.allowPrivilegeEscalation=false)"),
        "{err}"
    );
    let out = k
        .run(&[
            "create",
            "deployment",
            "web",
            "--image=nginx",
            "-n",
            "secure",
        ])
        .expect("kubectl")
        .success()
        .expect("deployment allowed");
    assert!(
        out.stderr
            .contains("Warning: would violate PodSecurity \"restricted:latest\""),
        "{}",
        out.stderr
    );

    // ServiceAccount admission mounts the API credentials.
    ok(&k, &["run", "plain", "--image=busybox", "-n", "default"]);
    let mounts = ok(
        &k,
        &[
            "get",
            "pod",
            "plain",
            "-n",
            "default",
            "-o",
            "jsonpath={.spec.containers[0].volumeMounts[0].mountPath}",
        ],
    );
    assert_eq!(
        mounts.trim(),
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver binary; run via .ci/test"]
async fn component_identities() {
    let api = ApiServer::start(Backend::Sqlite).await.expect("apiserver");
    let dir = api.data_dir().to_path_buf();
    let admin = api.kubectl(31);
    let as_file = |file: &str| Kubectl::new(31, dir.join(file), dir.join("kubectl-cache"));
    let sched = as_file("scheduler.kubeconfig");
    assert!(ok(&sched, &["auth", "whoami"]).contains("system:kube-scheduler"));
    let err = fails(&sched, &["get", "secrets", "-A"]);
    assert!(
        err.contains("User \"system:kube-scheduler\" cannot list resource \"secrets\""),
        "{err}"
    );
    let ctrl = as_file("controllers.kubeconfig");
    ok(&ctrl, &["get", "pods", "-A"]);

    // A kubelet kubeconfig comes from the API; the kubelet may change its own node only.
    let (status, body) = api
        .raw("GET", "/lotse/node-kubeconfig/n1", None, Vec::new())
        .await
        .expect("node kubeconfig");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(dir.join("kubelet-n1.kubeconfig").exists());
    let node = as_file("kubelet-n1.kubeconfig");
    assert!(ok(&node, &["auth", "whoami"]).contains("system:node:n1"));
    for n in ["n1", "n2"] {
        let manifest = format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"metadata\":{{\"name\":\"{n}\"}}}}"
        );
        admin
            .run_stdin(&["apply", "--validate=false", "-f", "-"], &manifest)
            .expect("kubectl")
            .success()
            .expect("node created");
    }
    ok(&node, &["label", "node", "n1", "a=b"]);
    let err = fails(&node, &["label", "node", "n2", "a=b"]);
    assert!(
        err.contains("node \"n1\" is not allowed to modify node \"n2\""),
        "{err}"
    );

    // Node authorizer: a kubelet reads only what pods bound to it reference. (No controllers
    // run here, so the `default` ServiceAccount is created by hand.)
    ok(
        &admin,
        &["create", "serviceaccount", "default", "-n", "default"],
    );
    for sec in ["s1", "s2"] {
        ok(
            &admin,
            &["create", "secret", "generic", sec, "--from-literal=k=v"],
        );
    }
    for (pod, node, secret) in [("mine", "n1", "s1"), ("theirs", "n2", "s2")] {
        let manifest = format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{{\"name\":\"{pod}\",\"namespace\":\"default\"}},\"spec\":{{\"nodeName\":\"{node}\",\"containers\":[{{\"name\":\"c\",\"image\":\"busybox\",\"env\":[{{\"name\":\"K\",\"valueFrom\":{{\"secretKeyRef\":{{\"name\":\"{secret}\",\"key\":\"k\"}}}}}}]}}]}}}}"
        );
        admin
            .run_stdin(&["create", "-f", "-"], &manifest)
            .expect("kubectl")
            .success()
            .expect("pod created");
    }
    ok(&node, &["get", "secret", "s1", "-n", "default"]);
    let err = fails(&node, &["get", "secret", "s2", "-n", "default"]);
    assert!(
        err.contains("secrets \"s2\" is forbidden: User \"system:node:n1\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\": no relationship found between node 'n1' and this object"),
        "{err}"
    );
    let err = fails(&node, &["get", "secrets", "-n", "default"]);
    assert!(
        err.contains("can only get individual resources of this type"),
        "{err}"
    );
    // NodeRestriction: deletes and token requests only for its own pods.
    let err = fails(
        &node,
        &["delete", "pod", "theirs", "-n", "default", "--wait=false"],
    );
    assert!(
        err.contains("pods \"theirs\" is forbidden: node \"n1\" can only delete pods with spec.nodeName set to itself"),
        "{err}"
    );
    let err = fails(&node, &["create", "token", "default", "-n", "default"]);
    assert!(
        err.contains("node requested token not bound to a pod"),
        "{err}"
    );
    let err = fails(
        &node,
        &[
            "create",
            "token",
            "default",
            "-n",
            "default",
            "--bound-object-kind=Pod",
            "--bound-object-name=theirs",
        ],
    );
    assert!(
        err.contains("node requested token bound to a pod scheduled on a different node")
            || err.contains("without a uid"),
        "{err}"
    );
    let uid = ok(
        &admin,
        &[
            "get",
            "pod",
            "mine",
            "-n",
            "default",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
    );
    ok(
        &node,
        &[
            "create",
            "token",
            "default",
            "-n",
            "default",
            "--bound-object-kind=Pod",
            "--bound-object-name=mine",
            &format!("--bound-object-uid={}", uid.trim()),
        ],
    );
    ok(
        &node,
        &["delete", "pod", "mine", "-n", "default", "--wait=false"],
    );
}
