//! RBAC escalation prevention (Kubernetes does this in the RBAC registry): a user may create or
//! update a Role/ClusterRole only with rules they already hold (or with `escalate`), and a
//! binding only to a role whose rules they hold (or with `bind` on it).

use serde_json::Value;

use crate::admission::{Admit, Handles, Request};
use crate::auth::UserInfo;
use crate::authorization::chain::Authz;
use crate::authorization::rbac::{PolicyRule, confirm_no_escalation};
use crate::authorization::{Attributes, Decision};
use crate::error::{ApiError, ApiResult};
use crate::registry::{ResourceDef, fields};
use async_trait::async_trait;

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

async fn allowed(authz: Authz<'_>, a: &Attributes) -> ApiResult<bool> {
    Ok(matches!(authz.authorize(a).await?, Decision::Allow(_)))
}

/// Checks a write of an RBAC object by `user`.
pub async fn admit(
    authz: Authz<'_>,
    user: &UserInfo,
    def: &ResourceDef,
    obj: &Value,
) -> ApiResult<()> {
    if def.group != RBAC_GROUP {
        return Ok(());
    }
    let name = fields::name(obj);
    let ns = if def.namespaced {
        fields::namespace(obj)
    } else {
        ""
    };
    match def.kind {
        "Role" | "ClusterRole" => {
            if allowed(
                authz,
                &Attributes::resource(user, "escalate", RBAC_GROUP, def.plural, "", ns, name),
            )
            .await?
            {
                return Ok(());
            }
            let rules: Vec<PolicyRule> = obj
                .get("rules")
                .cloned()
                .and_then(|r| serde_json::from_value(r).ok())
                .unwrap_or_default();
            confirm_no_escalation(authz.rbac, authz.reader, user, ns, &rules)
                .await
                .map_err(|why| ApiError::forbidden(def, name, &why))
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let kind = obj
                .pointer("/roleRef/kind")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let role = obj
                .pointer("/roleRef/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let resource = if kind == "ClusterRole" {
                "clusterroles"
            } else {
                "roles"
            };
            if allowed(
                authz,
                &Attributes::resource(user, "bind", RBAC_GROUP, resource, "", ns, role),
            )
            .await?
            {
                return Ok(());
            }
            let rules = authz
                .rbac
                .role_rules(authz.reader, kind, ns, role)
                .await?
                .ok_or_else(|| {
                    let gr = format!("{resource}.{RBAC_GROUP}");
                    ApiError::forbidden(def, name, &format!("{gr} {role:?} not found"))
                })?;
            confirm_no_escalation(authz.rbac, authz.reader, user, ns, &rules)
                .await
                .map_err(|why| ApiError::forbidden(def, name, &why))
        }
        _ => Ok(()),
    }
}

/// RBAC escalation prevention (in Kubernetes the RBAC registry's, run before validating
/// admission): roles and bindings grant only what their writer holds.
pub struct RbacEscalation;

#[async_trait]
impl Admit for RbacEscalation {
    fn name(&self) -> &'static str {
        "RBACEscalation"
    }

    async fn validate(&self, h: Handles<'_>, r: &Request<'_>, obj: &Value) -> ApiResult<()> {
        match r.user {
            Some(u) => admit(h.authz, u, r.def, obj).await,
            None => Ok(()),
        }
    }
}
