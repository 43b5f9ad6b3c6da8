use clap::Parser;

/// lotse-cni: Lotse's CNI 1.0 plugin. Not implemented yet; see the networking issue.
#[derive(Parser)]
#[command(version, about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("lotse-cni is not implemented yet")
}
