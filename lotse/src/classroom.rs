//! `lotse classroom kubeconfigs|revoke`: credentials for the students of a `Classroom`
//! (`lotse.dev/v1alpha1`, see `controllers::classroom`).
//!
//! `kubeconfigs` writes `<out>/<student>.kubeconfig` for every student: a time-bound token of
//! the student's ServiceAccount (TokenRequest, bound to the ServiceAccount object), the student
//! namespace preset, and the apiserver address students can reach (the advertised address from
//! `kube-public/cluster-info`, else the admin kubeconfig's) with the cluster CA. With `--secret`
//! the same kubeconfigs go into the Opaque Secret `<classroom>-kubeconfigs` (one key
//! `<student>.kubeconfig` each) in the Classroom's `spec.teacherNamespace`: only who may read
//! Secrets there (the teacher, the admins) reads it; students hold `edit` in their own namespace
//! only. `revoke`
//! deletes and recreates the student's ServiceAccount: every token bound to the old object is
//! refused from then on.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use clap::{Args, Subcommand};
use controllers::classroom::{
    CLASSROOM_LABEL, Classroom, STUDENT_SERVICE_ACCOUNT, student_namespace,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

/// `lotse classroom …`.
#[derive(Args, Debug)]
pub struct ClassroomArgs {
    #[command(subcommand)]
    command: ClassroomCommand,
    #[command(flatten)]
    access: crate::access::ClusterAccess,
}

#[derive(Subcommand, Debug)]
enum ClassroomCommand {
    /// Write one kubeconfig per student (`<out>/<student>.kubeconfig`) with a time-bound token.
    Kubeconfigs {
        /// The Classroom.
        name: String,
        /// Directory to write the kubeconfigs to (created when missing).
        #[arg(long, required_unless_present = "secret")]
        out: Option<PathBuf>,
        /// Also (or instead) store them in the Secret `<name>-kubeconfigs` in the Classroom's
        /// `spec.teacherNamespace`, one key `<student>.kubeconfig` per student.
        #[arg(long)]
        secret: bool,
        /// How long the tokens are valid (`24h`, `90m`, `1h30m`; at least 10m).
        #[arg(long, default_value = "24h", value_parser = crate::token::parse_ttl)]
        duration: Duration,
    },
    /// Make a student's credentials stop working now (their ServiceAccount is recreated).
    Revoke {
        /// The Classroom.
        name: String,
        /// The student.
        student: String,
    },
}

/// Runs `lotse classroom …`.
pub async fn run(a: ClassroomArgs) -> anyhow::Result<()> {
    let kubeconfig_path = a.access.kubeconfig_path();
    let client = a.access.client().await?;
    let classrooms: Api<Classroom> = Api::all(client.clone());
    match a.command {
        ClassroomCommand::Kubeconfigs {
            name,
            out,
            secret,
            duration,
        } => {
            if duration < Duration::from_secs(600) {
                bail!("--duration must be at least 10m (the apiserver's minimum token lifetime)");
            }
            let class = classrooms
                .get(&name)
                .await
                .with_context(|| format!("reading Classroom {name:?}"))?;
            let teacher_ns = match (secret, &class.spec.teacher_namespace) {
                (false, _) => None,
                (true, Some(t)) => Some(t.clone()),
                (true, None) => bail!(
                    "Classroom {name:?} has no spec.teacherNamespace: --secret stores the kubeconfigs there"
                ),
            };
            let (server, ca_pem) = crate::token::cluster_info(&client, &kubeconfig_path).await?;
            if let Some(out) = &out {
                std::fs::create_dir_all(out)
                    .with_context(|| format!("creating {}", out.display()))?;
            }
            let mut files = std::collections::BTreeMap::new();
            for s in &class.spec.students {
                let ns = student_namespace(&name, &s.name);
                let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
                let req = TokenRequest {
                    spec: TokenRequestSpec {
                        audiences: vec![],
                        expiration_seconds: Some(duration.as_secs() as i64),
                        bound_object_ref: None,
                    },
                    ..Default::default()
                };
                let token = sas
                    .create_token_request(STUDENT_SERVICE_ACCOUNT, &PostParams::default(), &req)
                    .await
                    .with_context(|| {
                        format!(
                            "requesting a token for {ns}/{STUDENT_SERVICE_ACCOUNT} (is the classroom ready? kubectl get classroom {name})"
                        )
                    })?
                    .status
                    .context("the TokenRequest has no status")?
                    .token;
                let yaml = kubeconfig_yaml(&name, &s.name, &ns, &server, &ca_pem, &token);
                if let Some(out) = &out {
                    let path = out.join(format!("{}.kubeconfig", s.name));
                    write_private(&path, &yaml)?;
                    println!("{}", path.display());
                }
                files.insert(
                    format!("{}.kubeconfig", s.name),
                    ByteString(yaml.into_bytes()),
                );
            }
            if let Some(t) = teacher_ns {
                let secret_name = secret_name(&name);
                let secrets: Api<Secret> = Api::namespaced(client.clone(), &t);
                let mut labels = std::collections::BTreeMap::new();
                labels.insert(CLASSROOM_LABEL.to_string(), name.clone());
                let s = Secret {
                    metadata: ObjectMeta {
                        name: Some(secret_name.clone()),
                        labels: Some(labels),
                        ..Default::default()
                    },
                    type_: Some("Opaque".into()),
                    data: Some(files),
                    ..Default::default()
                };
                secrets
                    .patch(
                        &secret_name,
                        &PatchParams::apply("lotse-classroom").force(),
                        &Patch::Apply(&s),
                    )
                    .await
                    .with_context(|| {
                        format!(
                            "writing Secret {t}/{secret_name} (does the namespace {t:?} exist?)"
                        )
                    })?;
                println!("secret/{secret_name} -n {t}");
            }
        }
        ClassroomCommand::Revoke { name, student } => {
            let class = classrooms
                .get(&name)
                .await
                .with_context(|| format!("reading Classroom {name:?}"))?;
            if !class.spec.students.iter().any(|s| s.name == student) {
                bail!("Classroom {name:?} has no student {student:?}");
            }
            let ns = student_namespace(&name, &student);
            let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
            let old_uid = sas
                .get(STUDENT_SERVICE_ACCOUNT)
                .await
                .with_context(|| format!("reading {ns}/{STUDENT_SERVICE_ACCOUNT}"))?
                .metadata
                .uid;
            sas.delete(STUDENT_SERVICE_ACCOUNT, &DeleteParams::foreground())
                .await
                .with_context(|| format!("deleting {ns}/{STUDENT_SERVICE_ACCOUNT}"))?;
            // Recreate it (the controller would too): new tokens can be issued at once.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                match sas.get_opt(STUDENT_SERVICE_ACCOUNT).await? {
                    Some(sa) if sa.metadata.uid != old_uid => break,
                    Some(_) => {}
                    None => {
                        let mut sa = ServiceAccount::default();
                        sa.metadata.name = Some(STUDENT_SERVICE_ACCOUNT.into());
                        match sas.create(&PostParams::default(), &sa).await {
                            Ok(_) => break,
                            Err(kube::Error::Api(e)) if e.code == 409 => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                if std::time::Instant::now() > deadline {
                    bail!("{ns}/{STUDENT_SERVICE_ACCOUNT} was not deleted within 30s");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            println!(
                "credentials of student {student:?} in Classroom {name:?} revoked (run `lotse classroom kubeconfigs` for new ones)"
            );
        }
    }
    Ok(())
}

/// The Secret (in the teacher's namespace) holding a Classroom's kubeconfigs.
fn secret_name(classroom: &str) -> String {
    format!("{classroom}-kubeconfigs")
}

/// A student's kubeconfig.
fn kubeconfig_yaml(
    classroom: &str,
    student: &str,
    namespace: &str,
    server: &str,
    ca_pem: &str,
    token: &str,
) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let ctx = format!("{student}@{classroom}");
    let v = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": classroom, "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": student, "user": {"token": token}}],
        "contexts": [{"name": ctx, "context": {"cluster": classroom, "user": student, "namespace": namespace}}],
        "current-context": ctx,
    });
    serde_yaml::to_string(&v).unwrap_or_default()
}

/// Writes `text` readable by its owner only.
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_presets_namespace_and_token() {
        let y = kubeconfig_yaml(
            "math",
            "ada",
            "math-ada",
            "https://192.0.2.1:6443",
            "PEM",
            "tok",
        );
        let kc = kube::config::Kubeconfig::from_yaml(&y).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("ada@math"));
        let ctx = kc.contexts[0].context.as_ref().unwrap();
        assert_eq!(ctx.namespace.as_deref(), Some("math-ada"));
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://192.0.2.1:6443"));
    }
}
