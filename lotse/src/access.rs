//! How a `lotse` subcommand (`token`, `classroom`) reaches a running cluster: the admin
//! kubeconfig of its data dir, or one given with `--kubeconfig`.
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// `--data-dir` / `--kubeconfig` of the subcommands that talk to a running cluster.
#[derive(Args, Debug)]
pub struct ClusterAccess {
    /// The data directory of the cluster (its admin.kubeconfig is used).
    #[arg(
        long,
        env = "LOTSE_DATA_DIR",
        default_value = "/var/lib/lotse",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Kubeconfig to reach the cluster with (default: <data-dir>/admin.kubeconfig).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
}

impl ClusterAccess {
    /// The kubeconfig in use.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.kubeconfig
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin.kubeconfig"))
    }

    /// A client with the kubeconfig's identity.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let path = self.kubeconfig_path();
        let kubeconfig = Kubeconfig::read_from(&path).with_context(|| {
            format!(
                "reading {} (is the cluster's data dir right? --data-dir)",
                path.display()
            )
        })?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .context("loading the kubeconfig")?;
        kube::Client::try_from(config).context("building the client")
    }
}
