//! Kubernetes' wire format, byte for byte where clients compare bytes: objects in Go field
//! order ending with a newline, `Status` bodies in `metav1.Status` order, DELETE answered with
//! the object or a Success Status as Kubernetes' `ReturnDeletedObject`, Services with
//! `status.loadBalancer`, and `as=PartialObjectMetadata` honoured by GET, LIST and WATCH.
mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};

fn req(method: Method, uri: &str, accept: Option<&str>, body: Option<&str>) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .extension(common::admin());
    if let Some(a) = accept {
        b = b.header("accept", a);
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    b.body(Body::from(body.unwrap_or("").to_string()))
        .expect("request")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One request as the cluster admin: status and body text.
async fn call(
    state: &std::sync::Arc<apiserver::state::AppState>,
    method: Method,
    uri: &str,
    accept: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, String) {
    let (code, _, bytes) = common::send(state, req(method, uri, accept, body)).await;
    (code, text(&bytes))
}

#[tokio::test]
async fn objects_statuses_and_deletes_as_kubernetes_writes_them() {
    let (state, _store) = common::state().await;
    let cm = r#"{"apiVersion":"v1","data":{"b":"2","a":"1"},"kind":"ConfigMap","metadata":{"name":"c","labels":{"z":"1","a":"2"}}}"#;
    let (code, t) = call(
        &state,
        Method::POST,
        "/api/v1/namespaces/default/configmaps",
        None,
        Some(cm),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{}", t);
    assert!(t.starts_with(r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"c","namespace":"default","uid":"#), "{t}");
    assert!(t.contains(r#""labels":{"a":"2","z":"1"}"#), "{t}");
    assert!(
        t.ends_with("},\"data\":{\"a\":\"1\",\"b\":\"2\"}}\n"),
        "{t}"
    );
    // Served from storage the same way.
    let (_, t) = call(
        &state,
        Method::GET,
        "/api/v1/namespaces/default/configmaps/c",
        None,
        None,
    )
    .await;
    assert!(t.starts_with(r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"#));

    // A NotFound Status: Go field order, newline at the end.
    let (code, t) = call(
        &state,
        Method::GET,
        "/api/v1/namespaces/default/configmaps/nope",
        None,
        None,
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(
        t,
        "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"configmaps \\\"nope\\\" not found\",\"reason\":\"NotFound\",\"details\":{\"name\":\"nope\",\"kind\":\"configmaps\"},\"code\":404}\n"
    );

    // DELETE of a ConfigMap: a Success Status (no empty group); of a Service: the Service.
    let (code, t) = call(
        &state,
        Method::DELETE,
        "/api/v1/namespaces/default/configmaps/c",
        None,
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        t.starts_with(r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success","details":{"name":"c","kind":"configmaps","uid":""#),
        "{t}"
    );
    let svc = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"s"},"spec":{"ports":[{"port":80}]}}"#;
    let (code, t) = call(
        &state,
        Method::POST,
        "/api/v1/namespaces/default/services",
        None,
        Some(svc),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{}", t);
    assert!(t.ends_with("\"status\":{\"loadBalancer\":{}}}\n"), "{}", t);
    let (code, t) = call(
        &state,
        Method::DELETE,
        "/api/v1/namespaces/default/services/s",
        None,
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        t.starts_with(r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"s""#),
        "{}",
        t
    );
}

#[tokio::test]
async fn partial_object_metadata_for_get_list_and_watch() {
    let (state, _store) = common::state().await;
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"m"},"data":{"secretish":"x"}}"#;
    call(
        &state,
        Method::POST,
        "/api/v1/namespaces/default/configmaps",
        None,
        Some(cm),
    )
    .await;
    let accept = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
    for uri in [
        "/api/v1/namespaces/default/configmaps/m",
        "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=1",
    ] {
        let (code, t) = call(&state, Method::GET, uri, Some(accept), None).await;
        assert_eq!(code, StatusCode::OK, "{uri}");
        assert!(t.contains(r#"{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":{"name":"m""#), "{uri}: {t}");
        assert!(!t.contains("secretish"), "{uri}: only metadata: {t}");
    }
    let list_accept = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";
    let (_, t) = call(
        &state,
        Method::GET,
        "/api/v1/namespaces/default/configmaps",
        Some(list_accept),
        None,
    )
    .await;
    assert!(
        t.starts_with(r#"{"kind":"PartialObjectMetadataList","apiVersion":"meta.k8s.io/v1""#),
        "{t}"
    );
    assert!(!t.contains("secretish"), "{t}");
}
