//! The README's commands and the manifests in `manifests/examples/` run as written, so an example
//! cannot rot: every line of every `sh` block in README.md is either run here (the kubectl
//! quick start, against a real one-node `lotse up`), checked here (binaries and flags it names
//! exist: `<bin> --help` lists each flag; scripts parse), or run by CI itself (`bash .ci/test`).
//! A README line this file does not know fails the test, so a new command gets a check too.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use e2e::bin_dir;
use e2e::lotse::{Node, random_pod_cidr, wait_for};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(".."))
}

/// The commands of every ```sh block of README.md: comments dropped, `\` continuations joined.
fn readme_commands() -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(repo().join("README.md"))?;
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in text.lines() {
        let t = line.trim();
        if !in_sh {
            in_sh = t == "```sh" || t == "```bash";
            continue;
        }
        if t == "```" {
            in_sh = false;
            continue;
        }
        let code = match t.find(" #") {
            Some(i) => t[..i].trim_end(),
            None if t.starts_with('#') => "",
            None => t,
        };
        if let Some(head) = code.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        pending.push_str(code);
        let cmd = std::mem::take(&mut pending).trim().to_string();
        if !cmd.is_empty() {
            out.push(cmd);
        }
    }
    Ok(out)
}

/// The `--flags` a command line passes.
fn flags(cmd: &str) -> Vec<&str> {
    cmd.split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.split('=').next().unwrap_or(w))
        .collect()
}

/// `<program> [subcommand...] --help` lists every flag `cmd` passes to it; the subcommand is
/// the words between the program and the first flag (`lotse images import --name x f.tar`).
fn check_flags(program: &Path, cmd: &str) -> anyhow::Result<()> {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let start = words
        .iter()
        .position(|w| w.ends_with(&*name))
        .map_or(words.len(), |i| i + 1);
    let sub: Vec<&str> = words[start..]
        .iter()
        .take_while(|w| !w.starts_with('-') && w.chars().all(|c| c.is_ascii_lowercase()))
        .copied()
        .collect();
    let out = Command::new(program)
        .args(&sub)
        .arg("--help")
        .output()
        .with_context(|| format!("running {} {sub:?} --help", program.display()))?;
    if !sub.is_empty() && !out.status.success() {
        bail!(
            "README: `{cmd}`: {} has no subcommand {sub:?}",
            program.display()
        );
    }
    let help = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for f in flags(cmd) {
        if !help.contains(f) {
            bail!("README: `{cmd}`: {} has no flag {f}", program.display());
        }
    }
    Ok(())
}

/// The binary a `target/release/<bin>` word names, as built in this test run (debug).
fn built_binary(word: &str) -> Option<PathBuf> {
    let name = word.strip_prefix("./").unwrap_or(word);
    let bin = name.strip_prefix("target/release/")?;
    Some(bin_dir().join(bin))
}

fn workspace_packages() -> anyhow::Result<Vec<String>> {
    let toml = std::fs::read_to_string(repo().join("Cargo.toml"))?;
    let members = toml
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .context("workspace members")?;
    Ok(members
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect())
}

/// Checks every README command that is not the kubectl quick start.
fn check_command(cmd: &str, packages: &[String]) -> anyhow::Result<()> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    // Environment assignments in front of a command (`LOTSE_BIN_DIR=... target/release/x`).
    let first = words
        .iter()
        .position(|w| !w.contains('=') || w.starts_with("--"))
        .unwrap_or(0);
    let words = &words[first..];
    match words {
        ["bash", script, ..] if script.starts_with(".ci/") => {
            let path = repo().join(script);
            let ok = Command::new("bash")
                .arg("-n")
                .arg(&path)
                .status()?
                .success();
            if !ok {
                bail!("README: `{cmd}`: {} does not parse", path.display());
            }
        }
        ["export", assignment] if assignment.starts_with("KUBECONFIG=") => {}
        ["cargo", "build", rest @ ..] => {
            let mut it = rest.iter();
            while let Some(w) = it.next() {
                if *w == "-p" {
                    let p = it.next().context("-p without a package")?;
                    if !packages.iter().any(|m| m == p) {
                        bail!("README: `{cmd}`: no workspace package {p}");
                    }
                }
            }
        }
        ["etcd", ..] => check_flags(Path::new("etcd"), cmd)?,
        [w, ..] if built_binary(w).is_some() => {
            let bin = built_binary(w).context("binary")?;
            if !bin.is_file() {
                bail!("README: `{cmd}`: {} was not built", bin.display());
            }
            check_flags(&bin, cmd)?;
        }
        ["kubectl", ..] => {}
        _ => bail!("README command not covered by e2e/tests/readme.rs: `{cmd}`"),
    }
    Ok(())
}

#[test]
#[ignore = "needs the built binaries and etcd (Debian etcd-server)"]
fn readme_commands_name_real_scripts_binaries_and_flags() -> anyhow::Result<()> {
    let cmds = readme_commands()?;
    assert!(cmds.len() > 5, "README sh blocks: {cmds:?}");
    let packages = workspace_packages()?;
    for cmd in &cmds {
        check_command(cmd, &packages)?;
    }
    // The two newcomer commands come first, and CI runs the same test command.
    assert_eq!(cmds[0], "bash .ci/up");
    assert_eq!(cmds[1], "bash .ci/test");
    let ci = std::fs::read_to_string(repo().join(".ci/run"))?;
    assert!(ci.contains("/test\""), ".ci/run calls .ci/test: {ci}");
    Ok(())
}

#[test]
#[ignore = "needs root, containerd, runc and the busybox, pause, nginx and postgres image archives"]
fn readme_quick_start_and_example_manifests_run_as_written() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let node = Node::start(
        tmp.path(),
        "readme-node",
        &random_pod_cidr()?,
        // postgres: the db-lab example's database and its web client
        &["busybox.tar", "pause.tar", "nginx.tar", "postgres.tar"],
    )?;
    let k = &node.kubectl;
    let kubeconfig = node.data.join("admin.kubeconfig");
    // The quick start: every kubectl line of the README, run by a shell in the repository as a
    // user types it, with the stock `kubectl` on PATH and the cluster's admin kubeconfig.
    let mut ran = 0;
    for cmd in readme_commands()? {
        if !cmd.starts_with("kubectl ") {
            continue;
        }
        let out = Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .current_dir(repo())
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", tmp.path())
            .output()?;
        if !out.status.success() {
            bail!(
                "README: `{cmd}` failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ran += 1;
    }
    assert!(ran >= 4, "the quick start has kubectl commands ({ran})");

    // Every example manifest applies, and its workloads become available with the images the
    // node has (no tag that does not exist).
    let examples = repo().join("manifests/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    for f in &files {
        k.ok(&["apply", "-f", &f.to_string_lossy()])
            .with_context(|| format!("applying {}", f.display()))?;
    }
    let deployments = k.ok(&[
        "get",
        "deployments",
        "-A",
        "-o",
        "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name} {end}",
    ])?;
    for d in deployments.split_whitespace() {
        let (ns, name) = d.split_once('/').context("namespace/name")?;
        wait_for(
            k,
            &[
                "get",
                "deployment",
                name,
                "-n",
                ns,
                "-o",
                "jsonpath={.status.availableReplicas}/{.spec.replicas}",
            ],
            &format!("deployment {d} available"),
            Duration::from_secs(120),
            |s| {
                s.split_once('/')
                    .is_some_and(|(a, b)| a == b && !a.is_empty())
            },
        )
        .with_context(|| {
            let pods = k
                .run(&["get", "pods", "-A", "-o", "wide"])
                .map(|o| o.stdout)
                .unwrap_or_default();
            let events = k
                .run(&["get", "events", "-A"])
                .map(|o| o.stdout)
                .unwrap_or_default();
            format!("{pods}\n{events}")
        })?;
    }
    assert!(deployments.contains("web-lab/web"), "{deployments}");
    // The web lab's nginx answers on its pod address.
    let ip = k.ok(&[
        "get",
        "pods",
        "-n",
        "web-lab",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ])?;
    let page = e2e::lotse::http_get(ip.trim(), 80)?;
    assert!(page.contains("nginx"), "{page}");
    let mut node = node;
    node.lotse.stop()?;
    Ok(())
}
