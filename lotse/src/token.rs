//! `lotse token create|list|delete`: bootstrap tokens for joining nodes, as `kubeadm token`.
//! A token is a Secret `kube-system/bootstrap-token-<id>` made through the API with the
//! cluster's admin kubeconfig; `--print-join-command` prints the `lotse join` line a new node
//! runs: the server from `kube-public/cluster-info` (the advertised address), the token and the
//! CA's public-key hash that the node pins.

use std::time::Duration;

use anyhow::{Context, bail};
use apiserver::authn::bootstrap_token::{
    BootstrapToken, CLUSTER_INFO, KEY_DESCRIPTION, KEY_EXPIRATION, KEY_EXTRA_GROUPS,
    KEY_TOKEN_SECRET, KEY_USAGE_AUTHENTICATION, KEY_USAGE_SIGNING, PUBLIC_NAMESPACE, SECRET_PREFIX,
    SECRET_TYPE, TOKEN_NAMESPACE,
};
use base64::Engine;
use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::Kubeconfig;

/// `lotse token …`.
#[derive(Args, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
    #[command(flatten)]
    access: crate::access::ClusterAccess,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a bootstrap token (random unless given) and print it.
    Create {
        /// The token to create, `[a-z0-9]{6}.[a-z0-9]{16}`; random when omitted.
        token: Option<String>,
        /// How long the token is valid (`24h`, `30m`, `1h30m`); `0` never expires.
        #[arg(long, default_value = "24h", value_parser = parse_ttl)]
        ttl: Duration,
        /// A human-readable description of the token.
        #[arg(long, default_value = "")]
        description: String,
        /// Print the whole `lotse join` command instead of only the token.
        #[arg(long)]
        print_join_command: bool,
    },
    /// List the bootstrap tokens.
    List,
    /// Delete bootstrap tokens (`<id>` or `<id>.<secret>`).
    Delete {
        /// Tokens or token ids.
        #[arg(required = true)]
        tokens: Vec<String>,
    },
}

/// Parses a Go-style duration of hours, minutes and seconds (`24h`, `1h30m`, `90s`, `0`).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let mult = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(format!("invalid duration {s:?} (use e.g. 24h, 30m, 1h30m)")),
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?} (use e.g. 24h, 30m, 1h30m)"))?;
        total = total.saturating_add(n.saturating_mul(mult));
        num.clear();
    }
    if !num.is_empty() || s.is_empty() {
        return Err(format!(
            "invalid duration {s:?}: missing unit (use e.g. 24h, 30m, 1h30m)"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// The `lotse join` line for `server` (`https://host:port`), `token` and the CA's hash.
pub fn join_command(server: &str, token: &BootstrapToken, ca_hash: &str) -> String {
    let host = server.trim_start_matches("https://").trim_end_matches('/');
    format!("lotse join {host} --token {token} --discovery-token-ca-cert-hash {ca_hash}")
}

/// Runs `lotse token …`.
pub async fn run(a: TokenArgs) -> anyhow::Result<()> {
    let kubeconfig_path = a.access.kubeconfig_path();
    let client = a.access.client().await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), TOKEN_NAMESPACE);
    match a.command {
        TokenCommand::Create {
            token,
            ttl,
            description,
            print_join_command,
        } => {
            let token = match token {
                Some(t) => BootstrapToken::parse(&t).with_context(|| {
                    format!("the bootstrap token {t:?} was not of the form \"^([a-z0-9]{{6}})\\\\.([a-z0-9]{{16}})$\"")
                })?,
                None => BootstrapToken::generate(),
            };
            let expiration = (!ttl.is_zero())
                .then(|| -> anyhow::Result<String> {
                    let t =
                        jiff::Timestamp::now().checked_add(jiff::SignedDuration::try_from(ttl)?)?;
                    Ok(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                })
                .transpose()?;
            let secret: Secret =
                serde_json::from_value(token.secret(expiration.as_deref(), &description))?;
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .context("creating the bootstrap token Secret")?;
            if !print_join_command {
                println!("{token}");
                return Ok(());
            }
            let (server, ca_pem) = cluster_info(&client, &kubeconfig_path).await?;
            let hash = apiserver::pki::ca_public_key_hash(&ca_pem)?;
            println!("{}", join_command(&server, &token, &hash));
        }
        TokenCommand::List => {
            let list = secrets
                .list(&ListParams::default().fields(&format!("type={SECRET_TYPE}")))
                .await
                .context("listing bootstrap tokens")?;
            println!(
                "{:<24}{:<9}{:<22}{:<30}{:<30}EXTRA GROUPS",
                "TOKEN", "TTL", "EXPIRES", "USAGES", "DESCRIPTION"
            );
            let now = jiff::Timestamp::now();
            for s in &list.items {
                if let Some(row) = list_row(s, now) {
                    println!("{row}");
                }
            }
        }
        TokenCommand::Delete { tokens } => {
            for t in tokens {
                let id = t.split('.').next().unwrap_or_default().to_string();
                let valid_id = id.len() == 6
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
                if !valid_id {
                    bail!(
                        "given token didn't match pattern \"^([a-z0-9]{{6}})$\" or \"^([a-z0-9]{{6}})\\\\.([a-z0-9]{{16}})$\""
                    );
                }
                match secrets
                    .delete(&format!("{SECRET_PREFIX}{id}"), &DeleteParams::default())
                    .await
                {
                    Ok(_) => println!("bootstrap token {id:?} deleted"),
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        bail!("bootstrap token {id:?} not found")
                    }
                    Err(e) => return Err(e).context(format!("deleting bootstrap token {id:?}")),
                }
            }
        }
    }
    Ok(())
}

/// The server URL and CA that joining nodes see: `kube-public/cluster-info` (the advertised
/// address, as kubeadm prints), else the admin kubeconfig's.
pub(crate) async fn cluster_info(
    client: &kube::Client,
    kubeconfig: &std::path::Path,
) -> anyhow::Result<(String, String)> {
    let from_cm = Api::<ConfigMap>::namespaced(client.clone(), PUBLIC_NAMESPACE)
        .get(CLUSTER_INFO)
        .await
        .ok()
        .and_then(|cm| cm.data?.get("kubeconfig").cloned());
    let kc = match from_cm {
        Some(y) => Kubeconfig::from_yaml(&y).context("cluster-info's kubeconfig")?,
        None => Kubeconfig::read_from(kubeconfig)?,
    };
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .context("the kubeconfig names no cluster")?;
    let server = cluster.server.context("the kubeconfig names no server")?;
    let ca_b64 = cluster
        .certificate_authority_data
        .context("the kubeconfig carries no certificate-authority-data")?;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(ca_b64.trim())
        .context("certificate-authority-data is not base64")?;
    Ok((server, String::from_utf8(ca)?))
}

/// One `lotse token list` line (kubeadm's columns), None for a Secret that is not a token.
fn list_row(s: &Secret, now: jiff::Timestamp) -> Option<String> {
    let name = s.metadata.name.as_deref()?;
    let id = name.strip_prefix(SECRET_PREFIX)?;
    let data = s.data.as_ref()?;
    let get = |k: &str| {
        data.get(k)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .unwrap_or_default()
    };
    let secret = get(KEY_TOKEN_SECRET);
    let (ttl, expires) = match get(KEY_EXPIRATION).parse::<jiff::Timestamp>() {
        Ok(t) => {
            let left = t.as_second() - now.as_second();
            let ttl = if left <= 0 {
                "<invalid>".to_string()
            } else {
                human(left)
            };
            (ttl, t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        }
        Err(_) => ("<forever>".to_string(), "<never>".to_string()),
    };
    let mut usages = Vec::new();
    if get(KEY_USAGE_AUTHENTICATION) == "true" {
        usages.push("authentication");
    }
    if get(KEY_USAGE_SIGNING) == "true" {
        usages.push("signing");
    }
    let description = get(KEY_DESCRIPTION);
    Some(format!(
        "{:<24}{:<9}{:<22}{:<30}{:<30}{}",
        format!("{id}.{secret}"),
        ttl,
        expires,
        usages.join(","),
        if description.is_empty() {
            "<none>".to_string()
        } else {
            description
        },
        get(KEY_EXTRA_GROUPS)
    ))
}

/// kubectl's short durations (`23h`, `59m`, `2d`).
fn human(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_like_kubeadm() {
        assert_eq!(parse_ttl("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_ttl("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_ttl("0"), Ok(Duration::ZERO));
        assert!(parse_ttl("10").is_err());
        assert!(parse_ttl("1d").is_err());
        assert!(parse_ttl("").is_err());
    }

    #[test]
    fn join_line() {
        let t = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        assert_eq!(
            join_command("https://10.0.0.1:6443", &t, "sha256:00"),
            "lotse join 10.0.0.1:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:00"
        );
    }

    #[test]
    fn list_rows() {
        let t = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let s: Secret =
            serde_json::from_value(t.secret(Some("2030-01-01T00:00:00Z"), "for n2")).unwrap();
        let row = list_row(&s, "2029-12-31T00:00:00Z".parse().unwrap()).unwrap();
        assert!(row.starts_with("abcdef.0123456789abcdef 24h"), "{row}");
        assert!(row.contains("authentication,signing"), "{row}");
        assert!(row.contains("for n2"), "{row}");
        assert!(
            row.ends_with("system:bootstrappers:kubeadm:default-node-token"),
            "{row}"
        );
        let s: Secret = serde_json::from_value(t.secret(None, "")).unwrap();
        assert!(
            list_row(&s, jiff::Timestamp::now())
                .unwrap()
                .contains("<forever>")
        );
    }
}
