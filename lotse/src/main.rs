//! `lotse`: the all-in-one launcher.
mod access;
mod backup;
mod classroom;
mod down;
mod images;
mod install;
mod join;
mod nodes;
mod system;
mod token;
mod up;

use clap::{Parser, Subcommand};

use images::BuildArgs;
use up::UpArgs;

/// Lotse: a Kubernetes-compatible cluster on one machine.
///
///   sudo lotse up                 # apiserver + controllers + scheduler + containerd + kubelet
///   export KUBECONFIG=/var/lib/lotse/admin.kubeconfig
///   kubectl run web --image=nginx
///
/// No container registry is needed: `lotse images build` makes busybox, nginx, debian and the
/// sandbox image from the machine's Debian packages, and the kubelet imports them at start.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the whole cluster in this process (Ctrl-C stops it; running it again resumes it).
    Up(UpArgs),
    /// Stop the node's pods (preStop hooks and grace periods honoured) and the control plane;
    /// the data stays and `lotse up` resumes the cluster.
    Down(down::DownArgs),
    /// Stop the cluster and remove everything it created: containers, mounts, the node bridge,
    /// nftables tables and the data dir (asks for --yes).
    Reset(down::ResetArgs),
    /// Make this machine a node of a running cluster (`lotse token create
    /// --print-join-command` on the server prints the command); runs the node until stopped.
    Join(join::JoinArgs),
    /// Bootstrap tokens for joining nodes: create (with --print-join-command), list, delete.
    Token(token::TokenArgs),
    /// Write a consistent backup of a (running) cluster: its embedded store and PKI.
    Backup(backup::BackupArgs),
    /// Make a new data dir from a backup (then `lotse up --data-dir` on it).
    Restore(backup::RestoreArgs),
    /// Students' credentials of a Classroom: kubeconfigs (time-bound tokens), revoke.
    Classroom(classroom::ClassroomArgs),
    /// Image archives for the kubelet's airgapped image store.
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
}

#[derive(Subcommand)]
enum ImagesCommand {
    /// Build base images offline into <root-dir>/images/ (busybox, pause ~1 s each; debian ~70 s; nginx ~15 s more).
    Build(BuildArgs),
    /// Put an image archive (`docker save` or OCI layout, optionally gzipped) into the node's
    /// image store, under the name it carries or --name.
    Import(images::ImportArgs),
    /// List the images in the node's containerd and the archives in its image store.
    List(images::ListArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Images {
            command: ImagesCommand::Build(b),
        } => {
            let out = b
                .output
                .unwrap_or_else(|| b.data_dir.join("kubelet/images"));
            if !b.no_install {
                let all = ["busybox", "pause", "debian", "nginx"].map(String::from);
                let images = if b.images.is_empty() {
                    &all[..]
                } else {
                    &b.images[..]
                };
                // Only what is still to be built (build.sh keeps existing archives).
                let todo: Vec<String> = images
                    .iter()
                    .filter(|i| b.force || !out.join(format!("{i}.tar")).is_file())
                    .cloned()
                    .collect();
                install::install_missing(false, &todo)?;
            }
            images::build_images(&out, b.force, &b.images)
        }
        Command::Images {
            command: ImagesCommand::Import(a),
        } => images::import(a),
        Command::Images {
            command: ImagesCommand::List(a),
        } => tokio::runtime::Runtime::new()?.block_on(images::list(a)),
        Command::Backup(a) => backup::backup(a),
        Command::Restore(a) => backup::restore(a),
        Command::Down(a) => {
            init_tracing();
            tokio::runtime::Runtime::new()?.block_on(down::down(a))
        }
        Command::Reset(a) => {
            init_tracing();
            tokio::runtime::Runtime::new()?.block_on(down::reset(a))
        }
        Command::Token(a) => tokio::runtime::Runtime::new()?.block_on(token::run(a)),
        Command::Classroom(a) => tokio::runtime::Runtime::new()?.block_on(classroom::run(a)),
        Command::Join(a) => {
            init_tracing();
            tokio::runtime::Runtime::new()?.block_on(join::join(a))
        }
        Command::Up(a) => {
            init_tracing();
            tokio::runtime::Runtime::new()?.block_on(up::up(a))
        }
    }
}

/// Logs to stderr, `RUST_LOG` filters (default info).
fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}
