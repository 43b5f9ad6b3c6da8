//! Shared helpers for the registry entries: JSON accessors, table cells, Go-style value rendering
//! (as Kubernetes prints values in field errors), label selector checks and port validation (label
//! selector strings and matching, and the DNS name checks, are `lotse_core`'s).

use lotse_core::names::max_len_error;
use lotse_core::selectors::selector_string;
use serde_json::{Map, Value};

use crate::registry::{
    Column, FieldError, NAME_COLUMN, NameRule, ResourceDef, Strategy, fields, no_defaults,
    no_fields, no_validation, normalize_as, schema_of,
};

/// A non-name table column.
pub(crate) const fn col(
    name: &'static str,
    type_: &'static str,
    priority: i32,
    description: &'static str,
) -> Column {
    Column {
        name,
        type_,
        format: "",
        priority,
        description,
    }
}

/// Description of the "Containers" wide column.
pub(crate) const CONTAINERS_DESC: &str = "Names of each container in the template.";
/// Description of the "Images" wide column.
pub(crate) const IMAGES_DESC: &str = "Images referenced by each container in the template.";
/// Description of a label selector column.
pub(crate) const SELECTOR_DESC: &str = "A label query over pods that should match the replica count. Label keys and values that must match in order to be controlled by this controller. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors";

/// The entry for k8s-openapi type `K` served as `group/version` `kind` (`plural`, `singular`,
/// stored under `plural`) with the settings most entries share: namespaced, DNS-subdomain names,
/// no short names, categories, subresources or status, no extra defaults, validation or field
/// selectors, and Kubernetes' default table (NAME, Created At). Entries state what differs and
/// take the rest with `..def_of::<K>(...)`.
pub(crate) const fn def_of<K>(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
) -> ResourceDef
where
    K: serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema,
{
    ResourceDef {
        group,
        version,
        kind,
        plural,
        singular,
        namespaced: true,
        short_names: &[],
        categories: &[],
        storage_prefix: plural,
        name_rule: NameRule::Subdomain,
        subresources: &[],
        has_status: false,
        normalize: normalize_as::<K>,
        defaults: no_defaults,
        validate: no_validation,
        columns: &[NAME_COLUMN, CREATED_AT_COLUMN],
        cells: name_created_cells,
        field: no_fields,
        selectable_fields: &[],
        schema: schema_of::<K>,
        storage_view: None,
        return_deleted_object: false,
        custom: None,
        strategy: Strategy::DEFAULT,
    }
}

/// Printer columns of a workload with a pod template: NAME, the given columns, AGE, then the
/// wide CONTAINERS and IMAGES columns and, unless the first token is `no_selector`, SELECTOR
/// (rows from [`workload_cells`]).
macro_rules! workload_columns {
    (no_selector, $($c:expr),* $(,)?) => {
        &[
            NAME_COLUMN,
            $($c,)*
            AGE_COLUMN,
            col("Containers", "string", 1, CONTAINERS_DESC),
            col("Images", "string", 1, IMAGES_DESC),
        ]
    };
    ($($c:expr),* $(,)?) => {
        &[
            NAME_COLUMN,
            $($c,)*
            AGE_COLUMN,
            col("Containers", "string", 1, CONTAINERS_DESC),
            col("Images", "string", 1, IMAGES_DESC),
            col("Selector", "string", 1, SELECTOR_DESC),
        ]
    };
}
pub(crate) use workload_columns;

/// A row for [`workload_columns`]: NAME, `own`, AGE, the pod template's containers and images,
/// and the `selector` cell when the kind shows one.
pub(crate) fn workload_cells(
    o: &Value,
    own: impl IntoIterator<Item = Value>,
    selector: Option<String>,
) -> Vec<Value> {
    let (names, images) = container_cells(arr(o, &["spec", "template", "spec", "containers"]));
    let mut row = vec![name_cell(o)];
    row.extend(own);
    row.extend([age_cell(o), cell(names), cell(images)]);
    row.extend(selector.map(cell));
    row
}

/// The string at `path`, or "".
pub(crate) fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    fields::str_at(v, path).unwrap_or("")
}

/// The integer at `path`, or 0.
pub(crate) fn int(v: &Value, path: &[&str]) -> i64 {
    fields::i64_at(v, path).unwrap_or(0)
}

/// The boolean at `path`, or false.
pub(crate) fn boolean(v: &Value, path: &[&str]) -> bool {
    fields::at(v, path)
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The array at `path`, or an empty slice.
pub(crate) fn arr<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    fields::at(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The object at `path`, if any.
pub(crate) fn obj<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Map<String, Value>> {
    fields::at(v, path).and_then(Value::as_object)
}

/// Whether a value is present and not null.
pub(crate) fn present(v: &Value, path: &[&str]) -> bool {
    fields::at(v, path).is_some_and(|x| !x.is_null())
}

/// A string cell.
pub(crate) fn cell(s: impl Into<String>) -> Value {
    Value::String(s.into())
}

/// The NAME cell.
pub(crate) fn name_cell(o: &Value) -> Value {
    cell(fields::name(o))
}

/// The AGE cell.
pub(crate) fn age_cell(o: &Value) -> Value {
    cell(fields::age(o))
}

/// Cells NAME and "Created At" (Kubernetes' default table for kinds without a printer).
pub(crate) fn name_created_cells(o: &Value) -> Vec<Value> {
    vec![name_cell(o), cell(s(o, &["metadata", "creationTimestamp"]))]
}

/// The "Created At" column of Kubernetes' default table convertor.
pub(crate) const CREATED_AT_COLUMN: Column = Column {
    name: "Created At",
    type_: "date",
    format: "",
    priority: 0,
    description: "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
};

/// kubectl's `layoutContainerCells`: comma-joined container names and images.
pub(crate) fn container_cells(containers: &[Value]) -> (String, String) {
    let names: Vec<&str> = containers.iter().map(|c| s(c, &["name"])).collect();
    let images: Vec<&str> = containers.iter().map(|c| s(c, &["image"])).collect();
    (names.join(","), images.join(","))
}

/// `labels.FormatLabels`: `k=v,k2=v2` sorted by key, `<none>` when empty.
pub(crate) fn format_labels(m: Option<&Map<String, Value>>) -> String {
    let mut pairs: Vec<(String, String)> = m
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    if pairs.is_empty() {
        return "<none>".to_string();
    }
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `metav1.FormatLabelSelector`: like [`selector_string`] but `<none>` when empty.
pub(crate) fn format_label_selector(sel: Option<&Value>) -> String {
    let s = selector_string(sel);
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s
    }
}

/// Whether a label selector is empty (no matchLabels and no matchExpressions).
pub(crate) fn selector_is_empty(sel: &Value) -> bool {
    obj(sel, &["matchLabels"]).is_none_or(|m| m.is_empty())
        && arr(sel, &["matchExpressions"]).is_empty()
}

/// Go's `%q` of a string (close enough: JSON string escaping).
pub(crate) fn go_quote(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// Go's `%#v` of a `map[string]string` (`map[string]string(nil)` when absent).
pub(crate) fn go_string_map(m: Option<&Value>) -> String {
    match m.and_then(Value::as_object) {
        None => "map[string]string(nil)".to_string(),
        Some(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let body = keys
                .iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        go_quote(k),
                        go_quote(m.get(*k).and_then(Value::as_str).unwrap_or(""))
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!("map[string]string{{{body}}}")
        }
    }
}

/// Go's `%#v` of a `[]string` (`[]string(nil)` when absent).
pub(crate) fn go_string_slice(v: Option<&Value>) -> String {
    match v.and_then(Value::as_array) {
        None => "[]string(nil)".to_string(),
        Some(a) => {
            let body = a
                .iter()
                .map(|x| go_quote(x.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(", ");
            format!("[]string{{{body}}}")
        }
    }
}

/// Go's `%#v` of a `v1.LabelSelector`, as printed in Kubernetes' field errors.
pub(crate) fn go_label_selector(sel: &Value) -> String {
    let exprs = match fields::at(sel, &["matchExpressions"]).and_then(Value::as_array) {
        None => "[]v1.LabelSelectorRequirement(nil)".to_string(),
        Some(a) => {
            let body = a
                .iter()
                .map(|e| {
                    format!(
                        "v1.LabelSelectorRequirement{{Key:{}, Operator:{}, Values:{}}}",
                        go_quote(s(e, &["key"])),
                        go_quote(s(e, &["operator"])),
                        go_string_slice(e.get("values"))
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!("[]v1.LabelSelectorRequirement{{{body}}}")
        }
    };
    format!(
        "v1.LabelSelector{{MatchLabels:{}, MatchExpressions:{exprs}}}",
        go_string_map(sel.get("matchLabels"))
    )
}

/// An `Invalid value` error whose value is already rendered (Go-style).
pub(crate) fn invalid_raw(field: impl Into<String>, rendered: &str, detail: &str) -> FieldError {
    let field = field.into();
    let message = format!("{field}: Invalid value: {rendered}: {detail}");
    FieldError {
        reason: "FieldValueInvalid",
        field,
        message,
    }
}

/// ConfigMap/Secret `immutable`: once the old object sets it, it must stay set and the `data`
/// fields must not change.
pub(crate) fn immutable_once_set(
    errs: &mut Vec<FieldError>,
    o: &Value,
    old: Option<&Value>,
    data: &[&str],
) {
    let Some(old) = old.filter(|old| boolean(old, &["immutable"])) else {
        return;
    };
    if !boolean(o, &["immutable"]) {
        errs.push(FieldError::forbidden(
            "immutable",
            "field is immutable when `immutable` is set",
        ));
    }
    for k in data {
        if o.get(*k) != old.get(*k) {
            errs.push(FieldError::forbidden(
                *k,
                "field is immutable when `immutable` is set",
            ));
        }
    }
}

/// Field selector value `<reference>.<field>` of an event's object reference
/// (`involvedObject` in core/v1, `regarding` in events.k8s.io/v1).
pub(crate) fn object_reference_field<'a>(
    o: &'a Value,
    reference: &str,
    f: &str,
) -> Option<&'a str> {
    let field = f.strip_prefix(reference)?.strip_prefix('.')?;
    matches!(
        field,
        "kind" | "namespace" | "name" | "uid" | "apiVersion" | "resourceVersion" | "fieldPath"
    )
    .then(|| s(o, &[reference, field]))
}

/// `Invalid value ... field is immutable` when `new != old`.
pub(crate) fn immutable(
    errs: &mut Vec<FieldError>,
    field: &str,
    new: Option<&Value>,
    old: Option<&Value>,
) {
    let norm = |v: Option<&Value>| v.filter(|x| !x.is_null()).cloned();
    if norm(new) != norm(old) {
        errs.push(FieldError::invalid(
            field,
            new.unwrap_or(&Value::Null),
            "field is immutable",
        ));
    }
}

/// `ValidateNonnegativeField`.
pub(crate) fn nonnegative(errs: &mut Vec<FieldError>, v: &Value, path: &[&str], field: &str) {
    if let Some(n) = fields::i64_at(v, path)
        && n < 0
    {
        errs.push(FieldError::invalid(
            field,
            &Value::from(n),
            "must be greater than or equal to 0",
        ));
    }
}

/// `validation.IsValidPortNum` messages.
pub(crate) fn port_num_errors(p: i64) -> Vec<String> {
    if (1..=65535).contains(&p) {
        vec![]
    } else {
        vec!["must be between 1 and 65535, inclusive".to_string()]
    }
}

/// `validation.IsValidPortName` messages (IANA_SVC_NAME).
pub(crate) fn port_name_errors(port: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if port.len() > 15 {
        errs.push(max_len_error(15));
    }
    if !port
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        errs.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_string(),
        );
    }
    if !port.chars().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".to_string());
    }
    if port.contains("--") {
        errs.push("must not contain consecutive hyphens".to_string());
    }
    if port.starts_with('-') || port.ends_with('-') {
        errs.push("must not begin or end with a hyphen".to_string());
    }
    errs
}

/// Pushes one `Invalid value` error per message.
pub(crate) fn push_invalid_all(
    errs: &mut Vec<FieldError>,
    field: &str,
    value: &Value,
    msgs: Vec<String>,
) {
    for m in msgs {
        errs.push(FieldError::invalid(field, value, &m));
    }
}

/// Validates a `metav1.LabelSelector` (`ValidateLabelSelector`): operators and their values.
pub(crate) fn validate_label_selector(errs: &mut Vec<FieldError>, sel: &Value, path: &str) {
    for (i, e) in arr(sel, &["matchExpressions"]).iter().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        let op = s(e, &["operator"]);
        let n = arr(e, &["values"]).len();
        match op {
            "In" | "NotIn" => {
                if n == 0 {
                    errs.push(FieldError::required(
                        format!("{p}.values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    ));
                }
            }
            "Exists" | "DoesNotExist" => {
                if n > 0 {
                    errs.push(FieldError::forbidden(
                        format!("{p}.values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
            }
            _ => errs.push(FieldError::invalid(
                format!("{p}.operator"),
                &Value::String(op.into()),
                "not a valid selector operator",
            )),
        }
    }
}

/// Lower-cased first letter kind rendering used by kubectl (`pod/name`).
pub(crate) fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}
