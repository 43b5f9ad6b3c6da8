use clap::Parser;

/// Lotse controllers. Not implemented yet; see the controllers issue.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Path to a kubeconfig for talking to the apiserver.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("controllers is not implemented yet")
}
