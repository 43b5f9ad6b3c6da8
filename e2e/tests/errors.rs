//! Bad input over raw HTTPS against the real apiserver binary: every error is a Kubernetes
//! `Status` with the code, reason, message and details a real apiserver gives, and nothing
//! half-written is left behind. Runs on SQLite and on a real etcd.

use e2e::{ApiServer, Backend};
use serde_json::{Value, json};

const CMS: &str = "/api/v1/namespaces/default/configmaps";

/// Sends a request and returns (HTTP code, Status body), checking the Status envelope.
async fn status(
    server: &ApiServer,
    method: &str,
    path: &str,
    ct: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let (code, body) = server.raw(method, path, ct, body).await.expect("request");
    let v: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{method} {path}: body is not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    if code >= 400 {
        assert_eq!(v["kind"], "Status", "{v}");
        assert_eq!(v["apiVersion"], "v1", "{v}");
        assert_eq!(v["status"], "Failure", "{v}");
        assert_eq!(v["code"], code, "{v}");
    }
    (code, v)
}

/// Sends a request and asserts the Status' HTTP code and reason; returns the Status.
async fn expect_status(
    server: &ApiServer,
    method: &str,
    path: &str,
    ct: Option<&str>,
    body: Vec<u8>,
    code: u16,
    reason: &str,
) -> Value {
    let (got, v) = status(server, method, path, ct, body).await;
    assert_eq!(
        (got, v["reason"].as_str()),
        (code, Some(reason)),
        "{method} {path}: {v}"
    );
    v
}

fn cm(name: &str, data: &str) -> Vec<u8> {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": data}})
        .to_string()
        .into_bytes()
}

async fn assert_absent(server: &ApiServer, path: &str) {
    let (code, v) = status(server, "GET", path, None, vec![]).await;
    assert_eq!(code, 404, "{path} exists after a failed write: {v}");
}

async fn bad_input(backend: Backend) {
    let server = ApiServer::start(backend).await.expect("start apiserver");
    let json_ct = Some("application/json");

    // Malformed JSON → 400 BadRequest.
    let v = expect_status(
        &server,
        "POST",
        CMS,
        json_ct,
        br#"{"apiVersion":"v1","kind":"ConfigMap","#.to_vec(),
        400,
        "BadRequest",
    )
    .await;
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("json")),
        "{v}"
    );
    // Malformed YAML → 400 BadRequest.
    let yaml = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n".to_vec();
    expect_status(
        &server,
        "POST",
        CMS,
        Some("application/yaml"),
        yaml,
        400,
        "BadRequest",
    )
    .await;
    // A JSON array is not an object → 400.
    let (code, v) = status(&server, "POST", CMS, json_ct, b"[1,2]".to_vec()).await;
    assert_eq!(code, 400, "{v}");

    // Unknown field with fieldValidation=Strict → 400 naming the field; Ignore accepts it.
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "strict"}, "dataz": {"a": "b"}});
    let path = format!("{CMS}?fieldValidation=Strict");
    let v = expect_status(
        &server,
        "POST",
        &path,
        json_ct,
        body.to_string().into_bytes(),
        400,
        "BadRequest",
    )
    .await;
    assert_eq!(
        v["message"],
        "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: strict decoding error: unknown field \"dataz\"",
        "{v}"
    );
    assert_absent(&server, &format!("{CMS}/strict")).await;
    let path = format!("{CMS}?fieldValidation=Ignore");
    let (code, v) = status(
        &server,
        "POST",
        &path,
        json_ct,
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    assert!(v.get("dataz").is_none(), "unknown field stored: {v}");

    // Invalid name → 422 Invalid with the field path in the causes.
    let v = expect_status(
        &server,
        "POST",
        CMS,
        json_ct,
        cm("Bad_Name", "x"),
        422,
        "Invalid",
    )
    .await;
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"),
        "{v}"
    );
    assert_eq!(v["details"]["name"], "Bad_Name", "{v}");
    assert_eq!(v["details"]["kind"], "ConfigMap", "{v}");
    assert_eq!(v["details"]["causes"][0]["field"], "metadata.name", "{v}");
    assert_eq!(
        v["details"]["causes"][0]["reason"], "FieldValueInvalid",
        "{v}"
    );
    assert_absent(&server, &format!("{CMS}/Bad_Name")).await;

    // Duplicate create → 409 AlreadyExists.
    let (code, created) = status(&server, "POST", CMS, json_ct, cm("dup", "one")).await;
    assert_eq!(code, 201, "{created}");
    let v = expect_status(
        &server,
        "POST",
        CMS,
        json_ct,
        cm("dup", "two"),
        409,
        "AlreadyExists",
    )
    .await;
    assert_eq!(v["message"], "configmaps \"dup\" already exists", "{v}");
    assert_eq!(
        v["details"],
        json!({"name": "dup", "kind": "configmaps"}),
        "{v}"
    );
    let (_, now) = status(&server, "GET", &format!("{CMS}/dup"), None, vec![]).await;
    assert_eq!(
        now["data"]["k"], "one",
        "the duplicate overwrote the object: {now}"
    );

    // Stale resourceVersion on update → 409 Conflict with Kubernetes' wording.
    let mut fresh = created.clone();
    fresh["data"]["k"] = "updated".into();
    let (code, v) = status(
        &server,
        "PUT",
        &format!("{CMS}/dup"),
        json_ct,
        fresh.to_string().into_bytes(),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let mut stale = created;
    stale["data"]["k"] = "stale".into();
    let v = expect_status(
        &server,
        "PUT",
        &format!("{CMS}/dup"),
        json_ct,
        stale.to_string().into_bytes(),
        409,
        "Conflict",
    )
    .await;
    assert_eq!(
        v["message"],
        "Operation cannot be fulfilled on configmaps \"dup\": the object has been modified; please apply your changes to the latest version and try again",
        "{v}"
    );
    let (_, now) = status(&server, "GET", &format!("{CMS}/dup"), None, vec![]).await;
    assert_eq!(now["data"]["k"], "updated", "{now}");
    // Stale delete precondition → 409 too.
    let pre = json!({"preconditions": {"resourceVersion": "1"}})
        .to_string()
        .into_bytes();
    expect_status(
        &server,
        "DELETE",
        &format!("{CMS}/dup"),
        json_ct,
        pre,
        409,
        "Conflict",
    )
    .await;

    // Missing namespace → 404 NotFound for the namespace.
    let path = "/api/v1/namespaces/nowhere/configmaps";
    let v = expect_status(
        &server,
        "POST",
        path,
        json_ct,
        cm("cm", "x"),
        404,
        "NotFound",
    )
    .await;
    assert_eq!(v["message"], "namespaces \"nowhere\" not found", "{v}");
    assert_eq!(
        v["details"],
        json!({"name": "nowhere", "kind": "namespaces"}),
        "{v}"
    );
    assert_absent(&server, &format!("{path}/cm")).await;

    // Body over 3 MiB → 413.
    let big = cm("big", &"x".repeat(3 * 1024 * 1024 + 1));
    expect_status(
        &server,
        "POST",
        CMS,
        json_ct,
        big,
        413,
        "RequestEntityTooLarge",
    )
    .await;
    assert_absent(&server, &format!("{CMS}/big")).await;

    // Unknown resource (and unknown group) → 404.
    for path in [
        "/api/v1/namespaces/default/gizmos",
        "/apis/gizmos.example.com/v1/gizmos",
        "/api/v1/gizmos/x",
    ] {
        let v = expect_status(&server, "GET", path, None, vec![], 404, "NotFound").await;
        assert_eq!(
            v["message"], "the server could not find the requested resource",
            "{path}: {v}"
        );
    }
    // Missing object → 404 with details.
    let v = expect_status(
        &server,
        "GET",
        &format!("{CMS}/absent"),
        None,
        vec![],
        404,
        "NotFound",
    )
    .await;
    assert_eq!(v["message"], "configmaps \"absent\" not found", "{v}");

    // Unsupported media type → 415.
    expect_status(
        &server,
        "POST",
        CMS,
        Some("text/plain"),
        cm("plain", "x"),
        415,
        "UnsupportedMediaType",
    )
    .await;

    // The server is still healthy after all of it.
    let (code, _) = server
        .raw("GET", "/readyz", None, vec![])
        .await
        .expect("readyz");
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver binary; run via .ci/test"]
async fn bad_input_sqlite() {
    bad_input(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs built apiserver binary and etcd (Debian etcd-server); run via .ci/test"]
async fn bad_input_etcd() {
    bad_input(Backend::Etcd).await;
}
