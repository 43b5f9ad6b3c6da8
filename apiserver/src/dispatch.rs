//! The resource endpoints' router: a request for a resource path goes to LIST or WATCH
//! ([`crate::list`], [`crate::watch`]), to the object handlers ([`crate::handlers`]) or to a
//! subresource ([`crate::subresources`]) by method and path shape (Kubernetes'
//! `endpoints/installer`).

use axum::http::Method;
use axum::response::Response;
use bytes::Bytes;

use crate::error::{ApiError, ApiResult};
use crate::handlers::{self, Ctx};
use crate::{list, subresources, watch};

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
