//! The HTTP endpoints of the Kubernetes API: the resource router (below), the object handlers,
//! LIST and WATCH, subresources, the node proxy, reviews, discovery and OpenAPI, Table output.
//! They receive the server's state per request (kube-apiserver's request scope); everything
//! below them receives narrow handles.
//!
//! The resource endpoints' router: a request for a resource path goes to LIST or WATCH
//! ([`crate::endpoints::list`], [`crate::endpoints::watch`]), to the object handlers ([`crate::endpoints::handlers`]) or to a
//! subresource ([`crate::endpoints::subresources`]) by method and path shape (Kubernetes'
//! `endpoints/installer`).

pub mod components;
pub mod componentstatus;
pub mod csr;
pub mod discovery;
pub mod eviction;
pub mod handlers;
pub mod impersonation;
pub mod list;
pub mod openapi;
pub mod openapi_v2;
pub mod packed;
pub mod proxy;
pub mod reviews;
pub mod subresources;
pub mod table;
pub mod tokenrequest;
pub mod watch;

use axum::http::Method;
use axum::response::Response;
use bytes::Bytes;

use crate::error::{ApiError, ApiResult};
use handlers::Ctx;

/// Dispatches a resource request by method and path shape.
pub async fn handle(ctx: Ctx<'_>, method: &Method, body: Bytes) -> ApiResult<Response> {
    let rp = ctx.rp;
    match (&rp.name, rp.subresource.as_deref()) {
        (None, _) => match *method {
            Method::GET => {
                if ctx.query.flag("watch") {
                    watch::serve(&ctx).await
                } else {
                    list::serve(&ctx).await
                }
            }
            Method::POST => handlers::create(&ctx, body).await,
            Method::DELETE => list::delete_collection(&ctx, body).await,
            _ => Err(ApiError::method_not_allowed()),
        },
        (Some(name), None) => match *method {
            Method::GET => handlers::get(&ctx, name).await,
            Method::PUT => handlers::update(&ctx, name, body, None).await,
            Method::PATCH => handlers::patch(&ctx, name, body, None).await,
            Method::DELETE => handlers::delete(&ctx, name, body).await,
            _ => Err(ApiError::method_not_allowed()),
        },
        (Some(name), Some(sub)) => subresources::handle(&ctx, method, name, sub, body).await,
    }
}
