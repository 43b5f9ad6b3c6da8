use clap::Parser;

/// Lotse kubelet. Not implemented yet; see the kubelet issue.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Path to a kubeconfig for talking to the apiserver.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("kubelet is not implemented yet")
}
