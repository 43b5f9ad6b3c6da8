//! The token cleaner (Kubernetes' `pkg/controller/bootstrap/tokencleaner.go`): deletes
//! bootstrap-token Secrets in `kube-system` once their `expiration` has passed (with a UID
//! precondition, so a Secret re-created under the same name survives), and looks again when the
//! next one is due.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::Error;
use crate::bootstrapsigner::{TOKEN_NAMESPACE, TOKEN_SECRET_TYPE, time_left};
use crate::util;

struct Ctx {
    client: Client,
}

/// Runs the token cleaner until its watch ends.
pub async fn run(client: Client) -> Result<(), Error> {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
    });
    let api: Api<Secret> = Api::namespaced(client, TOKEN_NAMESPACE);
    util::run_controller(
        Controller::new(
            api,
            watcher::Config::default().fields(&format!("type={TOKEN_SECRET_TYPE}")),
        ),
        reconcile,
        ctx,
        "tokencleaner",
        Duration::from_secs(5),
    )
    .await
}

async fn reconcile(secret: Arc<Secret>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if secret.metadata.deletion_timestamp.is_some()
        || secret.type_.as_deref() != Some(TOKEN_SECRET_TYPE)
    {
        return Ok(Action::await_change());
    }
    // Kubernetes reads only the expiration here: a malformed token Secret that has one is
    // cleaned up like any other.
    let expiration = secret
        .data
        .as_ref()
        .and_then(|d| d.get("expiration"))
        .and_then(|v| String::from_utf8(v.0.clone()).ok());
    match time_left(expiration.as_deref(), jiff::Timestamp::now()) {
        None => Ok(Action::await_change()),
        Some(left) if !left.is_zero() => Ok(Action::requeue(left + Duration::from_secs(1))),
        Some(_) => {
            let name = secret.name_any();
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), TOKEN_NAMESPACE);
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: secret.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => tracing::info!(secret = %name, "deleted expired bootstrap token"),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            Ok(Action::await_change())
        }
    }
}
