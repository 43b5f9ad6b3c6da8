//! Impersonation (`Impersonate-User`, `Impersonate-Group`, `Impersonate-Uid`,
//! `Impersonate-Extra-<key>`), each gated by the `impersonate` verb as in Kubernetes.

use std::collections::BTreeMap;

use axum::http::HeaderMap;

use crate::auth::{ANONYMOUS, AUTHENTICATED, UNAUTHENTICATED, UserInfo};
use crate::authorization::Attributes;
use crate::authorization::chain::Authz;
use crate::error::{ApiError, ApiResult};

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or(""), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the impersonation headers ask for, or None when there are none.
fn requested(headers: &HeaderMap) -> ApiResult<Option<UserInfo>> {
    let name = headers
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let groups: Vec<String> = headers
        .get_all("impersonate-group")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    let uid = headers
        .get("impersonate-uid")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in headers {
        if let Some(key) = k.as_str().strip_prefix("impersonate-extra-")
            && let Ok(v) = v.to_str()
        {
            extra
                .entry(percent_decode(key))
                .or_default()
                .push(v.to_string());
        }
    }
    let Some(name) = name else {
        if !groups.is_empty() || uid.is_some() || !extra.is_empty() {
            return Err(ApiError::bad_request(
                "requested impersonation of groups, extra or uid without impersonating a user",
            ));
        }
        return Ok(None);
    };
    Ok(Some(UserInfo {
        name,
        uid: uid.unwrap_or_default(),
        groups,
        extra,
    }))
}

/// Applies impersonation headers: checks that `user` may impersonate each requested attribute
/// and returns the impersonated user (or `user` unchanged when no header is present).
pub async fn impersonate(
    authz: Authz<'_>,
    headers: &HeaderMap,
    user: UserInfo,
) -> ApiResult<UserInfo> {
    let Some(mut target) = requested(headers)? else {
        return Ok(user);
    };
    let check = |a: Attributes| async move { authz.require(&a).await };
    let sa = target
        .service_account_parts()
        .map(|(ns, n)| (ns.to_string(), n.to_string()));
    match &sa {
        Some((ns, n)) => {
            check(Attributes::resource(
                &user,
                "impersonate",
                "",
                "serviceaccounts",
                "",
                ns,
                n,
            ))
            .await?
        }
        None => {
            check(Attributes::resource(
                &user,
                "impersonate",
                "",
                "users",
                "",
                "",
                &target.name,
            ))
            .await?
        }
    }
    for g in &target.groups {
        check(Attributes::resource(
            &user,
            "impersonate",
            "",
            "groups",
            "",
            "",
            g,
        ))
        .await?;
    }
    if !target.uid.is_empty() {
        check(Attributes::resource(
            &user,
            "impersonate",
            "authentication.k8s.io",
            "uids",
            "",
            "",
            &target.uid,
        ))
        .await?;
    }
    for (k, vs) in &target.extra {
        for v in vs {
            check(Attributes::resource(
                &user,
                "impersonate",
                "authentication.k8s.io",
                "userextras",
                k,
                "",
                v,
            ))
            .await?;
        }
    }
    if let Some((ns, _)) = &sa {
        for g in [
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{ns}"),
        ] {
            if !target.groups.contains(&g) {
                target.groups.push(g);
            }
        }
    }
    let extra_group = if target.name == ANONYMOUS {
        UNAUTHENTICATED
    } else {
        AUTHENTICATED
    };
    if !target.in_group(extra_group) {
        target.groups.push(extra_group.to_string());
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_headers() {
        let mut h = HeaderMap::new();
        assert!(requested(&h).unwrap().is_none());
        h.insert("impersonate-group", "devs".parse().unwrap());
        assert!(requested(&h).is_err());
        h.insert(
            "impersonate-user",
            "system:serviceaccount:entenhausen:donald".parse().unwrap(),
        );
        h.append("impersonate-group", "ops".parse().unwrap());
        h.insert("impersonate-extra-scopes%2Fx", "a".parse().unwrap());
        let u = requested(&h).unwrap().unwrap();
        assert_eq!(u.groups, vec!["devs", "ops"]);
        assert_eq!(u.extra.get("scopes/x"), Some(&vec!["a".to_string()]));
        assert_eq!(u.service_account_parts(), Some(("entenhausen", "donald")));
    }
}
