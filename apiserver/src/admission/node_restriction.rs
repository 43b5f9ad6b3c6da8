//! NodeRestriction: a kubelet (`system:node:<name>` in `system:nodes`) may only change its own
//! Node and the pods bound to it.

use serde_json::Value;

use super::Operation;
use super::{Admit, Handles, Request};
use crate::auth::UserInfo;
use crate::error::{ApiError, ApiResult};
use crate::registry::{ResourceDef, fields};
use async_trait::async_trait;

/// Rejects node and pod writes of a kubelet outside its own node.
pub async fn admit(
    user: &UserInfo,
    def: &ResourceDef,
    op: Operation,
    obj: &Value,
    old: Option<&Value>,
) -> ApiResult<()> {
    let Some(node) = user.node_name() else {
        return Ok(());
    };
    if !def.group.is_empty() {
        return Ok(());
    }
    let name = fields::name(obj);
    match def.plural {
        "nodes" if name != node => Err(ApiError::forbidden(
            def,
            name,
            &format!("node {node:?} is not allowed to modify node {name:?}"),
        )),
        "pods" => {
            let bound =
                |o: &Value| o.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node);
            match op {
                Operation::Create => {
                    let mirror = obj
                        .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
                        .is_some();
                    if !mirror {
                        return Err(ApiError::forbidden(
                            def,
                            name,
                            &format!("node {node:?} can only create mirror pods"),
                        ));
                    }
                    if !bound(obj) {
                        return Err(ApiError::forbidden(
                            def,
                            name,
                            &format!(
                                "node {node:?} can only create pods with spec.nodeName set to itself"
                            ),
                        ));
                    }
                    Ok(())
                }
                Operation::Update => {
                    if !old.is_some_and(bound) {
                        return Err(ApiError::forbidden(
                            def,
                            name,
                            &format!(
                                "node {node:?} can only update pod status for pods with spec.nodeName set to itself"
                            ),
                        ));
                    }
                    Ok(())
                }
            }
        }
        _ => Ok(()),
    }
}

/// The NodeRestriction plugin: a kubelet writes only its own Node and its node's pods.
pub struct NodeRestriction;

#[async_trait]
impl Admit for NodeRestriction {
    fn name(&self) -> &'static str {
        "NodeRestriction"
    }

    async fn validate(&self, _h: Handles<'_>, r: &Request<'_>, obj: &Value) -> ApiResult<()> {
        match r.user {
            Some(u) => admit(u, r.def, r.op, obj, r.old).await,
            None => Ok(()),
        }
    }
}
