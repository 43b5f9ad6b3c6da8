//! core/v1 entries: serviceaccounts and secrets.

use k8s_openapi::api::core::v1 as corev1;
use lotse_core::names::max_len_error;
use serde_json::{Value, json};

use super::util::*;
use crate::registry::*;

// ---------------------------------------------------------------------------------------------
// serviceaccounts

/// core/v1 serviceaccounts.
pub const SERVICEACCOUNTS: ResourceDef = ResourceDef {
    short_names: &["sa"],
    return_deleted_object: true,
    subresources: &[Subresource::Token],
    columns: &[
        NAME_COLUMN,
        col(
            "Secrets",
            "string",
            0,
            "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
        ),
        AGE_COLUMN,
    ],
    cells: |o| {
        vec![
            name_cell(o),
            Value::from(arr(o, &["secrets"]).len()),
            age_cell(o),
        ]
    },
    ..def_of::<corev1::ServiceAccount>(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
    )
};

// ---------------------------------------------------------------------------------------------
// secrets

/// `stringData` is write-only: its entries are base64-encoded into `data` (overriding keys of
/// the same name) and the field is dropped, as Kubernetes' conversion does on every write.
fn merge_string_data(o: &mut Value) {
    use base64::Engine as _;
    let Value::Object(m) = o else { return };
    let Some(Value::Object(sd)) = m.remove("stringData") else {
        return;
    };
    if sd.is_empty() {
        return;
    }
    let data = m
        .entry("data")
        .or_insert_with(|| Value::Object(Default::default()));
    if !data.is_object() {
        *data = Value::Object(Default::default());
    }
    if let Value::Object(d) = data {
        for (k, v) in sd {
            let text = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            d.insert(
                k,
                Value::String(base64::engine::general_purpose::STANDARD.encode(text)),
            );
        }
    }
}

/// core/v1 secrets.
pub const SECRETS: ResourceDef = ResourceDef {
    defaults: |o| {
        merge_string_data(o);
        if let Value::Object(m) = o
            && m.get("type")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        {
            m.insert("type".into(), json!("Opaque"));
        }
    },
    validate: validate_secret,
    columns: &[
        NAME_COLUMN,
        col(
            "Type",
            "string",
            0,
            "Used to facilitate programmatic handling of secret data.",
        ),
        col("Data", "string", 0, "Data contains the secret data."),
        AGE_COLUMN,
    ],
    cells: |o| {
        let n = obj(o, &["data"]).map(|m| m.len()).unwrap_or(0);
        vec![
            name_cell(o),
            cell(s(o, &["type"])),
            Value::from(n),
            age_cell(o),
        ]
    },
    field: |o, f| match f {
        "type" => Some(s(o, &["type"]).to_string()),
        _ => None,
    },
    selectable_fields: &["type"],
    ..def_of::<corev1::Secret>("", "v1", "Secret", "secrets", "secret")
};

/// `IsConfigMapKey` messages.
pub(crate) fn config_key_errors(k: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if k.len() > 253 {
        errs.push(max_len_error(253));
    }
    if k.is_empty()
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        errs.push("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')".to_string());
    }
    if k == "." {
        errs.push("must not be '.'".to_string());
    } else if k == ".." {
        errs.push("must not be '..'".to_string());
    } else if k.starts_with("..") {
        errs.push("must not start with '..'".to_string());
    }
    errs
}

fn validate_secret(o: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(data) = obj(o, &["data"]) {
        for k in data.keys() {
            push_invalid_all(
                &mut errs,
                &format!("data[{k}]"),
                &json!(k),
                config_key_errors(k),
            );
        }
    }
    let has = |k: &str| obj(o, &["data"]).is_some_and(|d| d.contains_key(k));
    let ty = s(o, &["type"]);
    let sa_name = &[
        "metadata",
        "annotations",
        "kubernetes.io/service-account.name",
    ];
    let required: &[(&str, &str)] = match ty {
        "kubernetes.io/service-account-token" if s(o, sa_name).is_empty() => &[(
            "metadata.annotations[kubernetes.io/service-account.name]",
            "",
        )],
        "kubernetes.io/dockercfg" if !has(".dockercfg") => &[("data[.dockercfg]", "")],
        "kubernetes.io/dockerconfigjson" if !has(".dockerconfigjson") => {
            &[("data[.dockerconfigjson]", "")]
        }
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => &[(
            "data[username]",
            "must specify at least one of username or password",
        )],
        "kubernetes.io/ssh-auth" if !has("ssh-privatekey") => &[("data[ssh-privatekey]", "")],
        "kubernetes.io/tls" => match (has("tls.crt"), has("tls.key")) {
            (false, false) => &[("data[tls.crt]", ""), ("data[tls.key]", "")],
            (false, true) => &[("data[tls.crt]", "")],
            (true, false) => &[("data[tls.key]", "")],
            (true, true) => &[],
        },
        _ => &[],
    };
    for (f, d) in required {
        errs.push(FieldError::required(*f, d));
    }
    if let Some(old) = old {
        immutable(&mut errs, "type", o.get("type"), old.get("type"));
    }
    immutable_once_set(&mut errs, o, old, &["data"]);
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(errs: &[FieldError]) -> Vec<&str> {
        errs.iter().map(|e| e.message.as_str()).collect()
    }

    #[test]
    fn secret_string_data_merges_into_data() {
        let mut secret =
            json!({"data": {"a": "eA==", "b": "eA=="}, "stringData": {"b": "pw", "c": "hello"}});
        (SECRETS.defaults)(&mut secret);
        assert_eq!(
            secret,
            json!({"type": "Opaque", "data": {"a": "eA==", "b": "cHc=", "c": "aGVsbG8="}})
        );
    }

    #[test]
    fn secret_rules() {
        let mut secret = json!({"data": {"bad key": "eA=="}});
        (SECRETS.defaults)(&mut secret);
        assert_eq!(secret["type"], "Opaque");
        assert_eq!(
            msgs(&validate_secret(&secret, None)),
            [
                "data[bad key]: Invalid value: \"bad key\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
            ]
        );
        let tls = json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}});
        assert_eq!(
            msgs(&validate_secret(&tls, None)),
            ["data[tls.key]: Required value"]
        );
        let mut changed = tls.clone();
        changed["type"] = json!("Opaque");
        assert!(
            msgs(&validate_secret(&changed, Some(&tls)))
                .contains(&"type: Invalid value: \"Opaque\": field is immutable")
        );
    }
}
