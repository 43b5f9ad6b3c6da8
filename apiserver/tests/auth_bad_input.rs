//! Bad input to authentication, impersonation and admission, through the real router over a
//! temporary SQLite store: expired, malformed, wrongly signed and revoked tokens are a bare 401
//! that says nothing about why; impersonation without the `impersonate` verb is a 403 in
//! Kubernetes' words; and a write rejected by admission leaves storage untouched.

use std::sync::Arc;

use apiserver::auth::{ClientCertIdentity, UserInfo};
use apiserver::authn::TokenAuthority;
use apiserver::server;
use apiserver::state::AppState;
use apiserver::storage::Storage;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

mod common;

/// Kubernetes' body for every authentication failure.
/// Kubernetes' exact bytes, newline included.
const UNAUTHORIZED: &str = "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"Unauthorized\",\"reason\":\"Unauthorized\",\"code\":401}\n";

struct Api {
    state: Arc<AppState>,
    store: Arc<dyn Storage>,
    tokens: Arc<TokenAuthority>,
}

enum Who<'a> {
    Admin,
    Token(&'a str),
    Cert(UserInfo),
}

fn authority() -> TokenAuthority {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    TokenAuthority::from_pem(&key.serialize_pem()).expect("authority")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

impl Api {
    async fn new() -> Api {
        let (state, store) = common::state().await;
        state.start_loops();
        let tokens = Arc::new(authority());
        state.security.set_tokens(tokens.clone());
        Api {
            state,
            store,
            tokens,
        }
    }

    async fn call(
        &self,
        who: Who<'_>,
        method: &str,
        uri: &str,
        body: Option<Value>,
        extra: &[(&str, &str)],
    ) -> (StatusCode, String) {
        let mut b = Request::builder().method(method).uri(uri).header(
            header::CONTENT_TYPE,
            if method == "PATCH" {
                "application/merge-patch+json"
            } else {
                "application/json"
            },
        );
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        if let Who::Token(t) = who {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = body
            .map(|v| serde_json::to_vec(&v).expect("encode"))
            .unwrap_or_default();
        let mut req = b.body(Body::from(body)).expect("request");
        match who {
            Who::Admin => {
                req.extensions_mut().insert(common::admin());
            }
            Who::Cert(u) => {
                req.extensions_mut().insert(ClientCertIdentity(u));
            }
            Who::Token(_) => {}
        }
        let (status, _, bytes) = common::send(&self.state, req).await;
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn admin(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, String) {
        self.call(Who::Admin, method, uri, body, &[]).await
    }

    async fn must(&self, method: &str, uri: &str, body: Value) -> Value {
        let (s, b) = self.admin(method, uri, Some(body)).await;
        assert!(s.is_success(), "{method} {uri}: {s} {b}");
        serde_json::from_str(&b).expect("json")
    }

    /// A token for `ns/name` signed by this apiserver's key.
    fn token_for(&self, sa: &Value, lifetime: i64, issued: i64, bound: Option<&Value>) -> String {
        let bound = bound.map(|p| apiserver::authn::BoundObject {
            kind: "Pod".into(),
            name: p["metadata"]["name"].as_str().unwrap_or_default().into(),
            uid: p["metadata"]["uid"].as_str().unwrap_or_default().into(),
        });
        self.tokens
            .issue_service_account_token(
                sa["metadata"]["namespace"].as_str().unwrap_or_default(),
                sa["metadata"]["name"].as_str().unwrap_or_default(),
                sa["metadata"]["uid"].as_str().unwrap_or_default(),
                &[],
                lifetime,
                bound.as_ref(),
                issued,
            )
            .expect("token")
            .0
    }

    async fn whoami(&self, token: &str) -> (StatusCode, String) {
        self.call(
            Who::Token(token),
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})),
            &[],
        )
        .await
    }
}

fn assert_unauthorized(what: &str, (status, body): (StatusCode, String)) {
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
    assert_eq!(body, UNAUTHORIZED, "{what}: no detail leaked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_a_bare_401() {
    let api = Api::new().await;
    api.must(
        "POST",
        "/api/v1/namespaces",
        json!({"metadata": {"name": "entenhausen"}}),
    )
    .await;
    let sa = api
        .must(
            "POST",
            "/api/v1/namespaces/entenhausen/serviceaccounts",
            json!({"metadata": {"name": "donald"}}),
        )
        .await;
    let good = api.token_for(&sa, 3600, now(), None);
    let (s, body) = api.whoami(&good).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert!(
        body.contains("system:serviceaccount:entenhausen:donald"),
        "{body}"
    );

    // Expired an hour ago, and not valid until tomorrow.
    assert_unauthorized(
        "expired",
        api.whoami(&api.token_for(&sa, 3600, now() - 7200, None))
            .await,
    );
    assert_unauthorized(
        "not yet valid",
        api.whoami(&api.token_for(&sa, 3600, now() + 86_400, None))
            .await,
    );
    // Malformed in several ways.
    for bad in [
        "abc",
        "not.a.token",
        "a.b.c.d",
        "eyJhbGciOiJFUzI1NiJ9.e30.AAAA",
        "..",
        "\u{00e4}.\u{00f6}.\u{00fc}",
    ] {
        assert_unauthorized(bad, api.whoami(bad).await);
    }
    // Signed by another key; payload swapped under a valid signature; alg none.
    let foreign = authority()
        .issue_service_account_token(
            "entenhausen",
            "donald",
            sa["metadata"]["uid"].as_str().unwrap_or_default(),
            &[],
            3600,
            None,
            now(),
        )
        .expect("token")
        .0;
    assert_unauthorized("foreign key", api.whoami(&foreign).await);
    let g: Vec<&str> = good.split('.').collect();
    let f: Vec<&str> = foreign.split('.').collect();
    assert_unauthorized(
        "swapped signature",
        api.whoami(&format!("{}.{}.{}", g[0], g[1], f[2])).await,
    );
    assert_unauthorized(
        "alg none",
        api.whoami(&format!("eyJhbGciOiJub25lIn0.{}.", g[1])).await,
    );
    // A token is no client certificate fallback: a bad token with a good cert is still 401.
    {
        let mut req = Request::builder()
            .uri("/api/v1/namespaces")
            .header(header::AUTHORIZATION, "Bearer not.a.token")
            .body(Body::empty())
            .expect("request");
        req.extensions_mut().insert(common::admin());
        let resp = server::router(api.state.clone())
            .oneshot(req)
            .await
            .expect("response");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }

    // Revoked: the ServiceAccount is deleted, then re-created under the same name (new UID).
    let (s, b) = api
        .admin(
            "DELETE",
            "/api/v1/namespaces/entenhausen/serviceaccounts/donald",
            None,
        )
        .await;
    assert!(s.is_success(), "{b}");
    // Revocation follows the watch cache: wait (briefly) until it saw the delete.
    let mut last = api.whoami(&good).await;
    for _ in 0..100 {
        if last.0 == StatusCode::UNAUTHORIZED {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        last = api.whoami(&good).await;
    }
    assert_unauthorized("deleted service account", last);
    api.must(
        "POST",
        "/api/v1/namespaces/entenhausen/serviceaccounts",
        json!({"metadata": {"name": "donald"}}),
    )
    .await;
    assert_unauthorized("re-created service account", api.whoami(&good).await);

    // Bound to a pod: works while the pod exists, 401 once it is gone.
    let sa = api
        .must(
            "GET",
            "/api/v1/namespaces/entenhausen/serviceaccounts/donald",
            json!(null),
        )
        .await;
    api.must(
        "POST",
        "/api/v1/namespaces/entenhausen/serviceaccounts",
        json!({"metadata": {"name": "default"}}),
    )
    .await;
    let pod = api
        .must(
            "POST",
            "/api/v1/namespaces/entenhausen/pods",
            json!({"metadata": {"name": "p"}, "spec": {"serviceAccountName": "donald", "containers": [{"name": "c", "image": "busybox"}]}}),
        )
        .await;
    let bound = api.token_for(&sa, 3600, now(), Some(&pod));
    assert_eq!(api.whoami(&bound).await.0, StatusCode::CREATED);
    let (s, b) = api
        .admin(
            "DELETE",
            "/api/v1/namespaces/entenhausen/pods/p?gracePeriodSeconds=0",
            None,
        )
        .await;
    assert!(s.is_success(), "{b}");
    let mut last = api.whoami(&bound).await;
    for _ in 0..100 {
        if last.0 == StatusCode::UNAUTHORIZED {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        last = api.whoami(&bound).await;
    }
    assert_unauthorized("deleted bound pod", last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonation_without_rights_is_403() {
    let api = Api::new().await;
    let donald = UserInfo::service_account("entenhausen", "donald", "u1");
    let (s, body) = api
        .call(
            Who::Cert(donald.clone()),
            "GET",
            "/api/v1/namespaces/entenhausen/pods",
            None,
            &[("Impersonate-User", "dagobert")],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let status: Value = serde_json::from_str(&body).expect("status");
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(
        status["message"],
        "users \"dagobert\" is forbidden: User \"system:serviceaccount:entenhausen:donald\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
    );
    let (s, body) = api
        .call(
            Who::Cert(donald),
            "GET",
            "/api/v1/namespaces/entenhausen/pods",
            None,
            &[
                (
                    "Impersonate-User",
                    "system:serviceaccount:entenhausen:donald",
                ),
                ("Impersonate-Group", "system:masters"),
            ],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    // Even oneself: a ServiceAccount user is impersonated through `serviceaccounts`.
    assert!(
        body.contains("serviceaccounts \\\"donald\\\" is forbidden: User \\\"system:serviceaccount:entenhausen:donald\\\" cannot impersonate resource \\\"serviceaccounts\\\" in API group \\\"\\\" in the namespace \\\"entenhausen\\\""),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_rejection_writes_nothing() {
    let api = Api::new().await;
    for ns in ["klasse", "secure"] {
        api.must(
            "POST",
            "/api/v1/namespaces",
            json!({"metadata": {"name": ns}}),
        )
        .await;
        api.must(
            "POST",
            &format!("/api/v1/namespaces/{ns}/serviceaccounts"),
            json!({"metadata": {"name": "default"}}),
        )
        .await;
    }
    api.must(
        "POST",
        "/api/v1/namespaces/klasse/resourcequotas",
        json!({"metadata": {"name": "class-quota"}, "spec": {"hard": {"requests.cpu": "1", "pods": "5"}}}),
    )
    .await;
    api.must(
        "PATCH",
        "/api/v1/namespaces/secure",
        json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}),
    )
    .await;
    let pod = |name: &str, cpu: &str, privileged: bool| {
        json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": cpu}}, "securityContext": {"privileged": privileged}}]}})
    };
    // Let the quota controller record its first usage so its status writes are done.
    let mut used = String::new();
    for _ in 0..100 {
        let (_, b) = api
            .admin(
                "GET",
                "/api/v1/namespaces/klasse/resourcequotas/class-quota",
                None,
            )
            .await;
        used = b;
        if used.contains("\"used\"") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(used.contains("\"used\""), "{used}");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let rejected = [
        (
            "klasse",
            pod("big", "2", false),
            "exceeded quota: class-quota",
        ),
        (
            "klasse",
            json!({"metadata": {"name": "nosa"}, "spec": {"serviceAccountName": "ghost", "containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "100m"}}}]}}),
            "error looking up service account klasse/ghost",
        ),
        ("secure", pod("priv", "100m", true), "violates PodSecurity"),
    ];
    for (ns, body, why) in rejected {
        let before = api.store.current_revision().await.expect("revision");
        let (s, b) = api
            .admin("POST", &format!("/api/v1/namespaces/{ns}/pods"), Some(body))
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
        assert!(b.contains(why), "{b}");
        let after = api.store.current_revision().await.expect("revision");
        assert_eq!(before, after, "nothing written for {why}");
    }
    let (_, list) = api.admin("GET", "/api/v1/pods", None).await;
    let list: Value = serde_json::from_str(&list).expect("list");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");
}
