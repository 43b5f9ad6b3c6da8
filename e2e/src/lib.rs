//! Shared helpers for Lotse end-to-end tests: start real processes, run real kubectl.
//!
//! [`ApiServer`] starts the built `apiserver` binary on a free loopback port with a temporary
//! data dir, on embedded SQLite or on a real etcd ([`Etcd`]), waits for `/readyz`, and kills
//! everything on drop. [`Kubectl`] runs one of the versioned kubectl binaries against it.
//! [`Component`] starts the `controllers` or `scheduler` binary against an [`ApiServer`] under
//! its own identity, and [`wait_until`] polls a condition until it holds.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};

pub mod fairness;
pub mod lotse;
pub mod multinode;
pub mod report;
pub mod sim;

/// Where the versioned kubectl binaries live (`kubectl.1.27` … `kubectl.1.33`).
pub const KUBECTL_DIR: &str = "/usr/lib/google-cloud-sdk/bin";
/// Debian's etcd (package `etcd-server`).
pub const ETCD_BIN: &str = "/usr/bin/etcd";
/// How long a starting process may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Directory holding the workspace's built binaries: `$LOTSE_BIN_DIR`, else `target/debug`.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("LOTSE_BIN_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"),
    }
}

/// Runs `cmd args` (e.g. `ip`, `nft` in a bench's setup) and fails with its stderr unless it
/// exits 0.
pub fn sh(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(cmd).args(args).output()?;
    if !out.status.success() {
        bail!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A throwaway single-member etcd on free loopback ports; killed on drop.
pub struct Etcd {
    child: Child,
    endpoint: String,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts etcd and waits until its client port accepts requests.
    pub async fn start() -> anyhow::Result<Self> {
        let peer = format!("http://127.0.0.1:{}", free_port()?);
        Self::start_member(None, "lotse-e2e", &peer).await
    }

    /// Starts member `name` with peer URL `peer` on `data` (e.g. a data dir that `etcdctl
    /// snapshot restore` made with the same name and peer URL; default: a new one) and a free
    /// client port, and waits until it accepts requests.
    pub async fn start_member(data: Option<&Path>, name: &str, peer: &str) -> anyhow::Result<Self> {
        if !Path::new(ETCD_BIN).exists() {
            bail!("{ETCD_BIN} is missing: install Debian's etcd-server package (.ci/deps.sh does)");
        }
        let dir = tempfile::Builder::new()
            .prefix("lotse-e2e-etcd")
            .tempdir()?;
        let endpoint = format!("http://127.0.0.1:{}", free_port()?);
        let log = File::create(dir.path().join("etcd.log"))?;
        let data = data.map_or_else(|| dir.path().join("data"), Path::to_path_buf);
        let child = etcd_command(name, &data, &endpoint, peer, &format!("{name}={peer}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning etcd")?;
        let mut etcd = Self {
            child,
            endpoint,
            dir,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = etcd.child.try_wait()? {
                bail!("etcd exited with {status}:\n{}", etcd.log());
            }
            let connect = etcd_client::Client::connect([etcd.endpoint.as_str()], None);
            if let Ok(Ok(mut c)) = tokio::time::timeout(Duration::from_secs(2), connect).await
                && c.status().await.is_ok()
            {
                return Ok(etcd);
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd did not answer within {READY_TIMEOUT:?}:\n{}",
                    etcd.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The client URL (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The process id (for RSS readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// etcd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd's command line for member `name` of a new cluster (`initial_cluster`: `name=peer-url,…`).
fn etcd_command(
    name: &str,
    data_dir: &Path,
    client_url: &str,
    peer_url: &str,
    initial_cluster: &str,
) -> Command {
    let mut cmd = Command::new(ETCD_BIN);
    cmd.args(["--name", name])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen-client-urls", client_url])
        .args(["--advertise-client-urls", client_url])
        .args(["--listen-peer-urls", peer_url])
        .args(["--initial-advertise-peer-urls", peer_url])
        .args(["--initial-cluster", initial_cluster])
        .args(["--initial-cluster-state", "new"])
        .args(["--logger", "zap", "--log-outputs", "stderr"]);
    cmd
}

/// PEM files of a test CA, a certificate every etcd member serves and peers with (127.0.0.1 and
/// localhost, server and client use), and a client certificate for the apiserver.
#[derive(Debug, Clone)]
pub struct EtcdPki {
    /// The CA certificate (`--trusted-ca-file`, `--etcd-cafile`).
    pub ca: PathBuf,
    /// The members' certificate and key.
    pub member_cert: PathBuf,
    /// The members' key.
    pub member_key: PathBuf,
    /// The client certificate (`--etcd-certfile`).
    pub client_cert: PathBuf,
    /// The client key (`--etcd-keyfile`).
    pub client_key: PathBuf,
}

impl EtcdPki {
    /// Generates the CA and certificates into `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose, SanType,
        };
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "lotse-e2e-etcd-ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::from_ca_cert_der(ca_cert.der(), &ca_key)?;
        let pki = Self {
            ca: dir.join("ca.crt"),
            member_cert: dir.join("member.crt"),
            member_key: dir.join("member.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        };
        std::fs::write(&pki.ca, ca_cert.pem())?;
        let leaf = |cn: &str, sans: Vec<String>, server: bool, cert: &Path, key_path: &Path| {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(sans)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            if server {
                params
                    .subject_alt_names
                    .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
                params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ServerAuth);
            }
            let signed = params.signed_by(&key, &issuer)?;
            std::fs::write(cert, signed.pem())?;
            std::fs::write(key_path, key.serialize_pem())?;
            anyhow::Ok(())
        };
        leaf(
            "etcd-member",
            vec!["localhost".into()],
            true,
            &pki.member_cert,
            &pki.member_key,
        )?;
        leaf(
            "kube-apiserver-etcd-client",
            Vec::new(),
            false,
            &pki.client_cert,
            &pki.client_key,
        )?;
        Ok(pki)
    }

    /// etcd client TLS options with the CA and the client certificate.
    pub fn client_tls(&self) -> anyhow::Result<etcd_client::TlsOptions> {
        Ok(etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(std::fs::read(&self.ca)?))
            .identity(etcd_client::Identity::from_pem(
                std::fs::read(&self.client_cert)?,
                std::fs::read(&self.client_key)?,
            )))
    }
}

/// One member of an [`EtcdCluster`].
struct EtcdMember {
    name: String,
    client_url: String,
    command: Command,
    child: Option<Child>,
}

/// A throwaway etcd cluster of several members on free loopback ports, optionally TLS-only
/// (clients and peers, with client-certificate auth); killed on drop.
pub struct EtcdCluster {
    members: Vec<EtcdMember>,
    pki: Option<EtcdPki>,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `size` members (`https://` with certificates from [`EtcdPki`] when `tls`) and
    /// waits until every member answers.
    pub async fn start(size: usize, tls: bool) -> anyhow::Result<Self> {
        if !Path::new(ETCD_BIN).exists() {
            bail!("{ETCD_BIN} is missing: install Debian's etcd-server package (.ci/deps.sh does)");
        }
        let dir = tempfile::Builder::new()
            .prefix("lotse-e2e-etcd-cluster")
            .tempdir()?;
        let pki = if tls {
            Some(EtcdPki::generate(dir.path())?)
        } else {
            None
        };
        let scheme = if tls { "https" } else { "http" };
        let mut urls = Vec::new();
        for i in 0..size {
            let client = format!("{scheme}://127.0.0.1:{}", free_port()?);
            let peer = format!("{scheme}://127.0.0.1:{}", free_port()?);
            urls.push((format!("member{i}"), client, peer));
        }
        let initial_cluster = urls
            .iter()
            .map(|(name, _, peer)| format!("{name}={peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            members: Vec::new(),
            pki,
            dir,
        };
        for (name, client_url, peer_url) in urls {
            let mut cmd = etcd_command(
                &name,
                &cluster.dir.path().join(&name),
                &client_url,
                &peer_url,
                &initial_cluster,
            );
            if let Some(pki) = &cluster.pki {
                cmd.arg("--cert-file")
                    .arg(&pki.member_cert)
                    .arg("--key-file")
                    .arg(&pki.member_key)
                    .arg("--trusted-ca-file")
                    .arg(&pki.ca)
                    .arg("--client-cert-auth")
                    .arg("--peer-cert-file")
                    .arg(&pki.member_cert)
                    .arg("--peer-key-file")
                    .arg(&pki.member_key)
                    .arg("--peer-trusted-ca-file")
                    .arg(&pki.ca)
                    .arg("--peer-client-cert-auth");
            }
            cmd.stdout(Stdio::null());
            cluster.members.push(EtcdMember {
                name,
                client_url,
                command: cmd,
                child: None,
            });
            cluster.spawn(cluster.members.len() - 1)?;
        }
        for i in 0..size {
            cluster.wait_answers(i).await?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(&self.members[i].name))?;
        let member = &mut self.members[i];
        member.command.stderr(log);
        member.child = Some(member.command.spawn().context("spawning etcd")?);
        Ok(())
    }

    /// Starts member `i` again on its data dir (after [`kill`](Self::kill)) and waits until it
    /// answers.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_answers(i).await
    }

    async fn wait_answers(&mut self, i: usize) -> anyhow::Result<()> {
        let cluster = self;
        let deadline = Instant::now() + READY_TIMEOUT;
        {
            loop {
                if let Some(child) = cluster.members[i].child.as_mut()
                    && let Some(status) = child.try_wait()?
                {
                    bail!(
                        "etcd {} exited with {status}:\n{}",
                        cluster.members[i].name,
                        cluster.log(i)
                    );
                }
                let answered = tokio::time::timeout(Duration::from_secs(3), async {
                    let mut c = cluster.client(&[i]).await?;
                    c.status().await?;
                    anyhow::Ok(())
                })
                .await;
                if let Ok(Ok(())) = answered {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "etcd {} did not answer within {READY_TIMEOUT:?}:\n{}",
                        cluster.members[i].name,
                        cluster.log(i)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Member `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(&self.members[i].name)).unwrap_or_default()
    }

    /// The client URLs of all members, in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// The CA and certificates, when the cluster is TLS-only.
    pub fn pki(&self) -> Option<&EtcdPki> {
        self.pki.as_ref()
    }

    /// The apiserver flags for this cluster: `--etcd-servers` with every member, and
    /// `--etcd-cafile/--etcd-certfile/--etcd-keyfile` when it is TLS-only.
    pub fn apiserver_args(&self) -> Vec<String> {
        let mut args = vec!["--etcd-servers".to_string(), self.endpoints().join(",")];
        if let Some(pki) = &self.pki {
            for (flag, path) in [
                ("--etcd-cafile", &pki.ca),
                ("--etcd-certfile", &pki.client_cert),
                ("--etcd-keyfile", &pki.client_key),
            ] {
                args.push(flag.to_string());
                args.push(path.display().to_string());
            }
        }
        args
    }

    /// A client of members `which` (with the client certificate when TLS-only).
    pub async fn client(&self, which: &[usize]) -> anyhow::Result<etcd_client::Client> {
        let endpoints: Vec<&str> = which
            .iter()
            .map(|&i| self.members[i].client_url.as_str())
            .collect();
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        if let Some(pki) = &self.pki {
            options = options.with_tls(pki.client_tls()?);
        }
        Ok(etcd_client::Client::connect(endpoints, Some(options)).await?)
    }

    /// Whether member `i` runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// The index of the current leader, asked of the running members.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for i in 0..self.members.len() {
            if !self.is_running(i) {
                ids.push(None);
                continue;
            }
            let status = self.client(&[i]).await?.status().await?;
            let id = status.header().map(|h| h.member_id());
            ids.push(id);
            if status.leader() != 0 {
                leader = Some(status.leader());
            }
        }
        let leader = leader.ok_or_else(|| anyhow!("no member knows a leader"))?;
        ids.iter()
            .position(|id| *id == Some(leader))
            .ok_or_else(|| anyhow!("leader {leader:x} is not a running member"))
    }

    /// Kills member `i` with SIGKILL and waits for it to exit.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// The storage an [`ApiServer`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite under the data dir.
    Sqlite,
    /// A real etcd started for this apiserver.
    Etcd,
}

/// A running (or stopped, restartable) `apiserver` process with its own data dir and port.
pub struct ApiServer {
    binary: PathBuf,
    data_dir: tempfile::TempDir,
    port: u16,
    extra_args: Vec<String>,
    etcd: Option<Etcd>,
    child: Option<Child>,
    starts: u32,
}

impl ApiServer {
    /// Starts the debug (or `$LOTSE_BIN_DIR`) apiserver on `backend` and waits for `/readyz`.
    pub async fn start(backend: Backend) -> anyhow::Result<Self> {
        Self::start_with(bin_dir().join("apiserver"), backend, &[]).await
    }

    /// Starts `binary` on `backend` with extra command-line flags and waits for `/readyz`.
    pub async fn start_with(
        binary: PathBuf,
        backend: Backend,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        if !binary.exists() {
            bail!(
                "{} is missing: run `cargo build --workspace --bins` first (or set LOTSE_BIN_DIR)",
                binary.display()
            );
        }
        let etcd = match backend {
            Backend::Sqlite => None,
            Backend::Etcd => Some(Etcd::start().await?),
        };
        let mut server = Self {
            binary,
            data_dir: tempfile::Builder::new()
                .prefix("lotse-e2e-apiserver")
                .tempdir()?,
            port: free_port()?,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            etcd,
            child: None,
            starts: 0,
        };
        server.start_again().await?;
        Ok(server)
    }

    /// Which storage this apiserver uses.
    pub fn backend(&self) -> Backend {
        if self.etcd.is_some() {
            Backend::Etcd
        } else {
            Backend::Sqlite
        }
    }

    /// The HTTPS port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data dir (PKI, SQLite database, logs).
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The etcd this apiserver stores into, if any.
    pub fn etcd(&self) -> Option<&Etcd> {
        self.etcd.as_ref()
    }

    /// `<data-dir>/admin.kubeconfig` (cluster-admin client certificate).
    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.path().join("admin.kubeconfig")
    }

    /// The process id of the running apiserver.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log of the current (or last) run.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir
            .path()
            .join(format!("apiserver.{}.log", self.starts))
    }

    /// Kills the apiserver (SIGKILL: committed writes must survive) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sets the flags used by the next [`start_again`](Self::start_again).
    pub fn set_extra_args(&mut self, extra_args: &[&str]) {
        self.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
    }

    /// Moves the next start to another port (the kubeconfig is rewritten on start).
    pub fn set_port(&mut self, port: u16) {
        self.port = port;
    }

    /// Starts the apiserver (again) on the same data dir and port and waits for `/readyz`.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.starts += 1;
        let log = File::create(self.log_path())?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--data-dir")
            .arg(self.data_dir.path())
            .args(["--bind-address", "127.0.0.1"])
            .args(["--secure-port", &self.port.to_string()])
            .args(&self.extra_args)
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("LOTSE_E2E_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(etcd) = &self.etcd {
            cmd.args(["--etcd-servers", etcd.endpoint()]);
        }
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("spawning {}", self.binary.display()))?,
        );
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_error = String::from("not started");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!("apiserver exited with {status}:\n{}", self.log());
            }
            if self.kubeconfig().exists() {
                match self.readyz().await {
                    Ok(()) => return Ok(()),
                    Err(e) => last_error = format!("{e:#}"),
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "apiserver not ready within {READY_TIMEOUT:?} ({last_error}):\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn readyz(&self) -> anyhow::Result<()> {
        let client = self.client().await?;
        let req = http::Request::get("/readyz").body(Vec::new())?;
        let text = tokio::time::timeout(Duration::from_secs(2), client.request_text(req)).await??;
        if text.trim() != "ok" {
            bail!("/readyz answered {text:?}");
        }
        Ok(())
    }

    /// A kube-rs config from the admin kubeconfig (pointing at the current port).
    pub async fn kube_config(&self) -> anyhow::Result<kube::Config> {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig())?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        // The kubeconfig may still name the previous port while a restart rewrites it.
        config.cluster_url = format!("https://127.0.0.1:{}", self.port).parse()?;
        Ok(config)
    }

    /// A kube-rs client authenticated as cluster-admin.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        Ok(kube::Client::try_from(self.kube_config().await?)?)
    }

    /// A runner for `kubectl.1.<minor>` against this apiserver.
    pub fn kubectl(&self, minor: u32) -> Kubectl {
        Kubectl::new(
            minor,
            self.kubeconfig(),
            self.data_dir
                .path()
                .join(format!("kubectl-cache-1.{minor}")),
        )
    }

    /// Sends one raw request and returns the HTTP status and body (any status, no retries).
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        raw_request(&self.client().await?, method, path, content_type, body).await
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
        // LOTSE_E2E_KEEP_LOGS=DIR keeps every data dir's logs (a test returning Err does not panic).
        if let Some(keep) = std::env::var_os("LOTSE_E2E_KEEP_LOGS") {
            let to = Path::new(&keep).join(self.data_dir.path().file_name().unwrap_or_default());
            if std::fs::create_dir_all(&to).is_ok()
                && let Ok(entries) = std::fs::read_dir(self.data_dir.path())
            {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().ends_with(".log") {
                        let _ = std::fs::copy(e.path(), to.join(e.file_name()));
                    }
                }
            }
        }
    }
}

/// A control-plane component binary (`controllers`, `scheduler`) running against an
/// [`ApiServer`] under its own identity, from the `<data-dir>/<name>.kubeconfig` the apiserver
/// writes, so a missing RBAC rule shows up as a 403 in its log. Its stderr goes to
/// `<data-dir>/<name>-<n>.log`; SIGKILLed on drop (its log is printed when a test panics).
pub struct Component {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Component {
    /// Starts `bin_dir()/<name> --kubeconfig <data-dir>/<name>.kubeconfig <args>` with
    /// `RUST_LOG=<rust_log>`.
    pub fn start(
        api: &ApiServer,
        name: &str,
        rust_log: &str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let binary = bin_dir().join(name);
        let kubeconfig = api.data_dir().join(format!("{name}.kubeconfig"));
        let log = (0..)
            .map(|n| api.data_dir().join(format!("{name}-{n}.log")))
            .find(|p| !p.exists())
            .ok_or_else(|| anyhow!("no free log file name"))?;
        let child = Command::new(&binary)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (cargo build --workspace --bins, or set LOTSE_BIN_DIR)",
                    binary.display()
                )
            })?;
        Ok(Self {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// SIGKILL, as a crash or an OOM kill would end it; waits for the exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {} log {} ---\n{}",
                self.name,
                self.log.display(),
                self.log()
            );
        }
        self.kill();
    }
}

/// How often [`wait_until`] polls.
pub const POLL: Duration = Duration::from_millis(100);

/// Polls `check` every [`POLL`] until it returns `Ok(Some(value))`, and returns the value.
/// `Ok(None)` and `Err` both mean "not yet"; after `timeout` the last error (or, if there was
/// none, "timed out") is returned, naming `what`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    wait_until_every(what, timeout, POLL, check).await
}

/// [`wait_until`] polling every `every`.
pub async fn wait_until_every<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if Instant::now() > deadline {
            return Err(match last {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(every).await;
    }
}

/// [`wait_until`] for a condition: polls until `check` returns `Ok(true)`.
pub async fn wait_true<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    wait_until(what, timeout, || {
        let fut = check();
        async move { Ok(fut.await?.then_some(())) }
    })
    .await
}

/// Whether the pod's `Ready` condition is `True`.
pub fn pod_ready(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Writes what a kubelet reports for a started pod, for tests and benchmarks that run without
/// one: phase `Running`, `Ready` and `ContainersReady` `True`, and `ip` as the pod IP if given.
pub async fn mark_pod_ready(
    pods: &kube::Api<k8s_openapi::api::core::v1::Pod>,
    name: &str,
    ip: Option<&str>,
) -> kube::Result<k8s_openapi::api::core::v1::Pod> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let mut status = serde_json::json!({"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": now},
        {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
    ]});
    if let Some(ip) = ip {
        status["podIP"] = ip.into();
        status["podIPs"] = serde_json::json!([{ "ip": ip }]);
    }
    pods.patch_status(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await
}

/// Sends one raw request through `client` and returns the HTTP status and the body.
pub async fn raw_request(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::ACCEPT, "application/json");
    if let Some(ct) = content_type {
        req = req.header(http::header::CONTENT_TYPE, ct);
    }
    let resp = client
        .send(req.body(kube::client::Body::from(body))?)
        .await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect_bytes().await?;
    Ok((status, bytes.to_vec()))
}

/// What one kubectl run produced.
#[derive(Debug, Clone)]
pub struct KubectlOutput {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl KubectlOutput {
    fn from_output(out: Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Fails (with both streams in the message) unless the exit code is 0.
    pub fn success(self) -> anyhow::Result<Self> {
        if self.code != 0 {
            bail!(
                "kubectl failed with {}:\nstdout: {}\nstderr: {}",
                self.code,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }

    /// Fails unless the exit code is non-zero.
    pub fn failure(self) -> anyhow::Result<Self> {
        if self.code == 0 {
            bail!(
                "kubectl succeeded but should have failed:\nstdout: {}\nstderr: {}",
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

/// Runs one versioned kubectl binary with a fixed kubeconfig and its own discovery cache.
#[derive(Debug, Clone)]
pub struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
    cache_dir: PathBuf,
    /// The minor version (27 for kubectl 1.27).
    pub minor: u32,
}

impl Kubectl {
    /// `kubectl.1.<minor>` from [`KUBECTL_DIR`].
    pub fn new(minor: u32, kubeconfig: PathBuf, cache_dir: PathBuf) -> Self {
        Self {
            binary: Path::new(KUBECTL_DIR).join(format!("kubectl.1.{minor}")),
            kubeconfig,
            cache_dir,
            minor,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .args(args)
            .env_remove("KUBECONFIG");
        cmd
    }

    /// Runs kubectl with `args` (stdin closed) and captures its output.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<KubectlOutput> {
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.binary.display()))?;
        Ok(KubectlOutput::from_output(out))
    }

    /// Runs kubectl with `args` and returns its stdout; fails (naming `args` and showing both
    /// streams) unless it exits 0.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        Ok(self
            .run(args)?
            .success()
            .with_context(|| format!("kubectl {args:?}"))?
            .stdout)
    }

    /// [`ok`](Self::ok) feeding `stdin` (for `-f -`).
    pub fn ok_stdin(&self, args: &[&str], stdin: &str) -> anyhow::Result<String> {
        Ok(self
            .run_stdin(args, stdin)?
            .success()
            .with_context(|| format!("kubectl {args:?}"))?
            .stdout)
    }

    /// Runs kubectl with `args` and returns its stderr; fails unless it exits non-zero.
    pub fn fails(&self, args: &[&str]) -> anyhow::Result<String> {
        Ok(self
            .run(args)?
            .failure()
            .with_context(|| format!("kubectl {args:?}"))?
            .stderr)
    }

    /// Runs kubectl with `args`, feeding `stdin` (for `-f -`).
    pub fn run_stdin(&self, args: &[&str], stdin: &str) -> anyhow::Result<KubectlOutput> {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", self.binary.display()))?;
        let mut input = child.stdin.take().ok_or_else(|| anyhow!("no stdin pipe"))?;
        let data = stdin.as_bytes().to_vec();
        let writer = std::thread::spawn(move || input.write_all(&data));
        let out = child.wait_with_output()?;
        writer
            .join()
            .map_err(|_| anyhow!("stdin writer panicked"))??;
        Ok(KubectlOutput::from_output(out))
    }

    /// Starts kubectl in the background with stdout/stderr going to files (for `get -w`).
    pub fn spawn(&self, args: &[&str], dir: &Path) -> anyhow::Result<Background> {
        let stdout = dir.join(format!("bg-{}-{}.out", self.minor, free_port()?));
        let stderr = stdout.with_extension("err");
        let child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?)
            .spawn()?;
        Ok(Background {
            child,
            stdout,
            stderr,
        })
    }
}

/// A background kubectl; killed on drop.
pub struct Background {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Background {
    /// Its output so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Its error output so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until stdout satisfies `pred` or `timeout` passes; returns the output either way.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> (bool, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.stdout();
            if pred(&out) {
                return (true, out);
            }
            if Instant::now() > deadline {
                return (false, out);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `VmRSS` of a process from `/proc/<pid>/status`, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS")
}

/// One `kB` figure of `/proc/<pid>/status` (`VmRSS`, `RssAnon`, `RssFile`, ...).
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
        .ok_or_else(|| anyhow!("no {field} for {pid}"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("bad {field} line"))?
        .parse()?)
}

/// USER_HZ: the unit of /proc's CPU times (100 on every Linux architecture Lotse runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU time (user + system) a process has used so far, in seconds; 0 when it is gone or `None`.
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(stat) = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
    else {
        return 0.0;
    };
    // Fields after the command (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / TICKS_PER_SECOND
}

/// CPU time the whole machine has spent busy (all CPUs, not idle or waiting on I/O), in seconds.
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return 0.0;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle) / TICKS_PER_SECOND
}

/// The path of a file under `e2e/testdata/`.
pub fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

/// The path of a file under the workspace's `manifests/`.
pub fn manifest(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests")
        .join(name)
}

/// Prints how long a test has run at each step (`[12.3s] what`).
pub fn step(t0: std::time::Instant, what: &str) {
    eprintln!("[{:?}] {what}", t0.elapsed());
}

/// Retries `f` every 300 ms until it succeeds or `timeout` has passed; the last error, with
/// `what` and the timeout, otherwise.
pub fn eventually<T>(
    what: &str,
    timeout: std::time::Duration,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let t0 = std::time::Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if t0.elapsed() > timeout => {
                return Err(e.context(format!("{what}: not within {timeout:?}")));
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(300)),
        }
    }
}
