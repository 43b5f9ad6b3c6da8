//! Running `nft`.
//!
//! The rules go to the kernel through the `nft` tool reading a transaction on stdin, as
//! kube-proxy's nftables mode does (through knftables): `nft -f` sends the whole text as ONE
//! netlink batch, which the kernel applies atomically or not at all, and the rule grammar is
//! nft's own. No Rust crate offers that grammar over netlink (the netlink crates build
//! expressions by hand), so shelling out is the dependable way to get atomic transactions. This
//! is the one program the agent runs; links, routes and conntrack go over netlink.
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Why an nft transaction failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The `nft` program is not installed.
    #[error("nft not found (Debian package nftables): {0}")]
    Missing(std::io::Error),
    /// Running it failed.
    #[error("running nft: {0}")]
    Io(#[from] std::io::Error),
    /// nft rejected the transaction (nothing of it was applied).
    #[error("nft -f failed: {0}")]
    Rejected(String),
}

fn run(args: &[&str], netns: Option<&Path>, stdin: &str) -> Result<String, NftError> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("nft");
            c
        }
        None => Command::new("nft"),
    };
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NftError::Missing(e),
            _ => NftError::Io(e),
        })?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        // nft repeats the offending line with carets; the first lines say what is wrong.
        let msg: Vec<&str> = err.lines().take(6).collect();
        return Err(NftError::Rejected(msg.join("\n")));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Applies `transaction` (nft commands, one per line) atomically.
pub fn apply(transaction: &str) -> Result<(), NftError> {
    run(&["-f", "-"], None, transaction).map(|_| ())
}

/// Applies `transaction` inside the network namespace at `netns` (nft run under `nsenter`), for
/// benchmarks and tests.
pub fn apply_in(netns: &Path, transaction: &str) -> Result<(), NftError> {
    run(&["-f", "-"], Some(netns), transaction).map(|_| ())
}

/// Checks `transaction` with the kernel without applying it (`nft -c`).
pub fn check(transaction: &str) -> Result<(), NftError> {
    run(&["-c", "-f", "-"], None, transaction).map(|_| ())
}

/// `nft list table ip <table>`.
pub fn list_table(table: &str) -> Result<String, NftError> {
    run(&["list", "table", "ip", table], None, "")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A scratch network namespace (gone on drop); `None` when not root or nft is missing.
    pub(crate) struct TestNetns(crate::netlink::testns::TestNetns);

    impl TestNetns {
        pub(crate) fn new(tag: &str) -> Option<TestNetns> {
            if Command::new("nft").arg("--version").output().is_err() {
                eprintln!("nft missing: netns check {tag} skipped");
                return None;
            }
            crate::netlink::testns::TestNetns::new().map(TestNetns)
        }

        pub(crate) fn apply(&self, text: &str) {
            if let Err(e) = apply_in(self.0.path(), text) {
                panic!("nft rejected the transaction: {e}\n{text}");
            }
        }

        pub(crate) fn list(&self) -> String {
            run(&["list", "ruleset"], Some(self.0.path()), "").unwrap()
        }

        /// The ruleset after replacing everything with `full`.
        pub(crate) fn list_after(&self, full: &str) -> String {
            self.apply(full);
            self.list()
        }
    }

    #[test]
    fn a_rejected_transaction_changes_nothing() {
        let Some(ns) = TestNetns::new("reject") else {
            return;
        };
        ns.apply("add table ip t\nadd chain ip t c\nadd rule ip t c accept\n");
        let before = ns.list();
        let err = apply_in(
            ns.0.path(),
            "flush chain ip t c\nadd rule ip t c ip daddr nonsense accept\n",
        )
        .unwrap_err();
        assert!(matches!(err, NftError::Rejected(_)), "{err}");
        assert_eq!(ns.list(), before);
    }
}
