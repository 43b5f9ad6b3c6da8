//! Streaming subresources with every kubectl a student may bring, on a one-node `lotse up`
//! (real containerd, busybox): `exec` (plain, with stdin, exit codes), `attach`, `port-forward`
//! (several connections at once carrying bytes both ways, a port nothing listens on reported
//! with the kubelet's wording), `cp` both ways and `run -i --rm`, each with kubectl 1.27 (SPDY
//! for everything), 1.30 (WebSocket exec/attach, SPDY port-forward) and 1.33 (WebSocket, with
//! port-forward's SPDY tunnelled in it); then Kubernetes' answers to bad input: a missing
//! container, a completed pod, an unknown stream protocol version.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use e2e::Kubectl;
use e2e::lotse::{Node, random_pod_cidr, wait_for};
use futures::StreamExt;

const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: busybox
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir -p /www && echo hello-from-pod > /www/index.html && httpd -p 8080 -h /www && nc -ll -p 9000 -e cat & while true; do echo tick; sleep 0.3; done"]
"#;

const DONE: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: done}
spec:
  restartPolicy: Never
  containers:
  - name: done
    image: busybox
    imagePullPolicy: Never
    command: ["true"]
"#;

/// Sends `payload` on a fresh connection to `127.0.0.1:port`, half-closes, and reads the
/// answer to its end.
fn round_trip(port: u16, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(payload)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

fn port_forward(k: &Kubectl, dir: &std::path::Path) -> anyhow::Result<()> {
    let (http, echo, closed) = (e2e::free_port()?, e2e::free_port()?, e2e::free_port()?);
    let pf = k.spawn(
        &[
            "port-forward",
            "pod/web",
            &format!("{http}:8080"),
            &format!("{echo}:9000"),
            &format!("{closed}:5432"),
        ],
        dir,
    )?;
    let (ok, out) = pf.wait_for(Duration::from_secs(20), |o| {
        o.contains(&format!("Forwarding from 127.0.0.1:{closed}"))
    });
    ensure!(
        ok,
        "kubectl 1.{} port-forward did not start: {out} {}",
        k.minor,
        pf.stderr()
    );
    // Several connections at once, each with its own bytes both ways.
    let handles: Vec<_> = (0..6u8)
        .map(|i| {
            std::thread::spawn(move || -> anyhow::Result<()> {
                let payload: Vec<u8> = (0..200_000u32).map(|n| (n as u8) ^ i).collect();
                let back = round_trip(echo, &payload)?;
                ensure!(
                    back == payload,
                    "echo connection {i}: sent {} bytes, got {} back",
                    payload.len(),
                    back.len()
                );
                let page = round_trip(http, b"GET / HTTP/1.0\r\n\r\n")?;
                let page = String::from_utf8_lossy(&page);
                ensure!(page.contains("hello-from-pod"), "http {i}: {page}");
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("port-forward client panicked"))?
            .with_context(|| format!("kubectl 1.{} port-forward", k.minor))?;
    }
    // Nothing listens on 5432: the kubelet's error comes back on the error stream (client-go
    // then ends the forwarder itself, as against Kubernetes).
    let _ = round_trip(closed, b"hello?");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let expected = "error forwarding port 5432 to pod ";
    loop {
        // kubectl 1.33 logs the error as a quoted structured field.
        let err = pf.stderr().replace("\\\"", "\"");
        if err.contains(expected) {
            for part in [
                ", uid : failed to execute portforward in network namespace \"",
                "failed to connect to localhost:5432 inside namespace \"",
                "IPv4: dial tcp4 127.0.0.1:5432: connect: connection refused IPv6 dial tcp6 [::1]:5432: connect: connection refused",
            ] {
                ensure!(
                    err.contains(part),
                    "kubectl 1.{}: {part:?} missing in {err}",
                    k.minor
                );
            }
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "kubectl 1.{}: no port-forward error; stderr: {err}",
                k.minor
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn exec_attach_cp_run(k: &Kubectl, dir: &std::path::Path) -> anyhow::Result<()> {
    let v = k.minor;
    let out = k.ok(&["exec", "web", "--", "cat", "/www/index.html"])?;
    ensure!(out == "hello-from-pod\n", "kubectl 1.{v} exec: {out:?}");
    let out = k.run(&["exec", "web", "--", "sh", "-c", "echo oops >&2; exit 3"])?;
    ensure!(
        out.code == 3 && out.stderr.contains("oops"),
        "kubectl 1.{v} exec exit code: {out:?}"
    );
    let out = k.ok_stdin(
        &["exec", "-i", "web", "--", "sh", "-c", "cat; echo done"],
        "line one\nline two\n",
    )?;
    ensure!(
        out == "line one\nline two\ndone\n",
        "kubectl 1.{v} exec -i: {out:?}"
    );
    // attach follows the container's output from now on.
    let att = k.spawn(&["attach", "web"], dir)?;
    let (ok, out) = att.wait_for(Duration::from_secs(15), |o| o.contains("tick"));
    ensure!(ok, "kubectl 1.{v} attach: {out:?} {}", att.stderr());
    drop(att);
    // cp both ways (tar over exec).
    let payload: Vec<u8> = (0..300_000u32).map(|n| (n * 7 % 251) as u8).collect();
    let up = dir.join(format!("up-{v}.bin"));
    std::fs::write(&up, &payload)?;
    k.ok(&["cp", &up.to_string_lossy(), &format!("web:/tmp/up-{v}.bin")])?;
    let down = dir.join(format!("down-{v}.bin"));
    k.ok(&[
        "cp",
        &format!("web:/tmp/up-{v}.bin"),
        &down.to_string_lossy(),
    ])?;
    ensure!(
        std::fs::read(&down)? == payload,
        "kubectl 1.{v} cp: the file came back different"
    );
    // run -i --rm: attach with stdin to a stdinOnce pod, which ends at the end of stdin.
    let name = format!("once-{v}");
    let out = k.run_stdin(
        &[
            "run",
            &name,
            "-i",
            "--rm",
            "--restart=Never",
            "--image=busybox",
            "--image-pull-policy=Never",
            "--",
            "sh",
            "-c",
            "cat; echo bye",
        ],
        "from-stdin\n",
    )?;
    ensure!(
        out.code == 0 && out.stdout.contains("from-stdin\nbye"),
        "kubectl 1.{v} run -i --rm: {out:?}"
    );
    Ok(())
}

/// `POST pods/web/exec` upgrading to SPDY with `X-Stream-Protocol-Version: version`.
async fn spdy_upgrade(
    client: &kube::Client,
    pod: &str,
    version: &str,
) -> anyhow::Result<(u16, String)> {
    let req = http::Request::post(format!(
        "/api/v1/namespaces/default/pods/{pod}/exec?command=true&stdout=true"
    ))
    .header(http::header::CONNECTION, "Upgrade")
    .header(http::header::UPGRADE, "SPDY/3.1")
    .header("X-Stream-Protocol-Version", version)
    .body(kube::client::Body::from(Vec::new()))?;
    let resp = client.send(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect_bytes().await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root, containerd and the busybox/pause image archives"]
async fn streaming_with_kubectl_1_27_1_30_1_33() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let node = Node::start(
        tmp.path(),
        "streaming",
        &random_pod_cidr()?,
        &["busybox.tar", "pause.tar"],
    )?;
    let k = node.kubectl.clone();
    k.ok_stdin(&["apply", "-f", "-"], WEB)?;
    k.ok_stdin(&["apply", "-f", "-"], DONE)?;
    wait_for(
        &k,
        &["get", "pod", "web", "-o", "jsonpath={.status.phase}"],
        "pod web Running",
        Duration::from_secs(60),
        |s| s == "Running",
    )?;
    let kubeconfig = node.data.join("admin.kubeconfig");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work)?;
    for minor in [27, 30, 33] {
        let kx = Kubectl::new(minor, kubeconfig.clone(), tmp.path().join("cache"));
        let checks = exec_attach_cp_run(&kx, &work).and_then(|()| port_forward(&kx, &work));
        if let Err(e) = checks {
            let log = node.lotse.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "{e:#}\n--- last lines of lotse.log ---\n{}",
                tail.join("\n")
            );
        }
    }

    // Bad input, with Kubernetes' wording.
    let err = k.fails(&["exec", "web", "-c", "nope", "--", "true"])?;
    ensure!(
        err.contains("container nope is not valid for pod web"),
        "missing container: {err}"
    );
    wait_for(
        &k,
        &["get", "pod", "done", "-o", "jsonpath={.status.phase}"],
        "pod done Succeeded",
        Duration::from_secs(60),
        |s| s == "Succeeded",
    )?;
    // kubectl checks the phase itself; the apiserver must say the same to other clients.
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig)?,
            &Default::default(),
        )
        .await?,
    )?;
    let (status, body) = spdy_upgrade(&client, "done", "v4.channel.k8s.io").await?;
    ensure!(
        status == 400
            && body.contains(
                "cannot exec into a container in a completed pod; current phase is Succeeded"
            ),
        "exec into a completed pod: {status} {body}"
    );
    // The kubelet API through nodes/{name}/proxy, exec included (WebSocket, kube-rs).
    let out = k.ok(&["get", "--raw", "/api/v1/nodes/streaming/proxy/healthz"])?;
    ensure!(out == "ok", "nodes/proxy/healthz: {out:?}");
    let req = http::Request::get(
        "/api/v1/nodes/streaming/proxy/exec/default/web/web?command=echo&command=via-node-proxy&output=1",
    )
    .body(Vec::new())?;
    let mut ws = client.connect(req).await?.into_stream();
    let mut stdout = Vec::new();
    while let Some(Ok(m)) = ws.next().await {
        if m.is_close() {
            break;
        }
        let d = m.into_data();
        if d.first() == Some(&1) {
            stdout.extend_from_slice(&d[1..]);
        }
    }
    ensure!(
        stdout == b"via-node-proxy\n",
        "exec through nodes/proxy: {:?}",
        String::from_utf8_lossy(&stdout)
    );
    let (status, body) = spdy_upgrade(&client, "web", "v9.channel.k8s.io").await?;
    ensure!(
        status == 403
            && body.contains(
                "unable to upgrade: unable to negotiate protocol: client supports [v9.channel.k8s.io], server accepts [v4.channel.k8s.io v3.channel.k8s.io v2.channel.k8s.io channel.k8s.io]"
            ),
        "bad protocol version: {status} {body}"
    );
    Ok(())
}
