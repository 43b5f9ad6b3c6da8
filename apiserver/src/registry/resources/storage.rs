//! Storage entries: core/v1 persistentvolumes and persistentvolumeclaims, storage.k8s.io/v1
//! storageclasses, with Kubernetes' defaults (`SetDefaults_PersistentVolume`,
//! `SetDefaults_PersistentVolumeClaim`, `SetDefaults_StorageClass`), validation
//! (`ValidatePersistentVolume[Update]`, `ValidatePersistentVolumeClaim[Update]`,
//! `ValidateStorageClass[Update]`) and kubectl's printer columns.

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::storage::v1 as storagev1;
use lotse_core::Quantity;
use lotse_core::names::dns1123_subdomain;
use serde_json::{Map, Value, json};

use super::util::*;
use crate::registry::*;

/// The annotation marking the default StorageClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// The beta form of [`DEFAULT_CLASS_ANNOTATION`], still honoured by Kubernetes.
pub const BETA_DEFAULT_CLASS_ANNOTATION: &str = "storageclass.beta.kubernetes.io/is-default-class";
/// The deprecated class annotation of claims and volumes (wins over `spec.storageClassName`).
pub const BETA_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";

/// Access modes in the order kubectl prints them, with their abbreviations.
const ACCESS_MODES: &[(&str, &str)] = &[
    ("ReadWriteOnce", "RWO"),
    ("ReadOnlyMany", "ROX"),
    ("ReadWriteMany", "RWX"),
    ("ReadWriteOncePod", "RWOP"),
];
/// Access modes as Kubernetes lists them in `Unsupported value` errors (sorted).
const SUPPORTED_ACCESS_MODES: &[&str] = &[
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

/// The volume sources a PersistentVolume may name (exactly one).
const PV_SOURCES: &[&str] = &[
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "hostPath",
    "glusterfs",
    "nfs",
    "rbd",
    "iscsi",
    "cinder",
    "cephfs",
    "fc",
    "flocker",
    "flexVolume",
    "azureFile",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "portworxVolume",
    "scaleIO",
    "local",
    "storageos",
    "csi",
];

/// core/v1 persistentvolumes (cluster-scoped).
pub const PERSISTENTVOLUMES: ResourceDef = ResourceDef {
    namespaced: false,
    return_deleted_object: true,
    short_names: &["pv"],
    subresources: &[Subresource::Status],
    has_status: true,
    defaults: pv_defaults,
    validate: validate_pv,
    columns: &[
        NAME_COLUMN,
        col(
            "Capacity",
            "string",
            0,
            "capacity is the description of the persistent volume's resources and capacity. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#capacity",
        ),
        col(
            "Access Modes",
            "string",
            0,
            "accessModes contains all ways the volume can be mounted. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#access-modes",
        ),
        col(
            "Reclaim Policy",
            "string",
            0,
            "persistentVolumeReclaimPolicy defines what happens to a persistent volume when released from its claim. Valid options are Retain (default for manually created PersistentVolumes), Delete (default for dynamically provisioned PersistentVolumes), and Recycle (deprecated). Recycle must be supported by the volume plugin underlying this PersistentVolume. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#reclaiming",
        ),
        col(
            "Status",
            "string",
            0,
            "phase indicates if a volume is available, bound to a claim, or released by a claim. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#phase",
        ),
        col(
            "Claim",
            "string",
            0,
            "claimRef is part of a bi-directional binding between PersistentVolume and PersistentVolumeClaim. Expected to be non-nil when bound. claim.VolumeName is the authoritative bind between PV and PVC. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#binding",
        ),
        col("StorageClass", "string", 0, "StorageClass of the pv"),
        col(
            "VolumeAttributesClass",
            "string",
            0,
            "VolumeAttributesClass of the pv",
        ),
        col(
            "Reason",
            "string",
            0,
            "reason is a brief CamelCase string that describes any failure and is meant for machine parsing and tidy display in the CLI.",
        ),
        AGE_COLUMN,
        col(
            "VolumeMode",
            "string",
            1,
            "volumeMode defines if a volume is intended to be used with a formatted filesystem or to remain in raw block state. Value of Filesystem is implied when not included in spec.",
        ),
    ],
    cells: pv_cells,
    field: no_fields,
    ..def_of::<corev1::PersistentVolume>(
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        "persistentvolume",
    )
};

/// core/v1 persistentvolumeclaims.
pub const PERSISTENTVOLUMECLAIMS: ResourceDef = ResourceDef {
    short_names: &["pvc"],
    return_deleted_object: true,
    subresources: &[Subresource::Status],
    has_status: true,
    defaults: pvc_defaults,
    validate: validate_pvc,
    columns: &[
        NAME_COLUMN,
        col(
            "Status",
            "string",
            0,
            "phase represents the current phase of PersistentVolumeClaim.",
        ),
        col(
            "Volume",
            "string",
            0,
            "volumeName is the binding reference to the PersistentVolume backing this claim.",
        ),
        col(
            "Capacity",
            "string",
            0,
            "capacity represents the actual resources of the underlying volume.",
        ),
        col(
            "Access Modes",
            "string",
            0,
            "accessModes contains the actual access modes the volume backing the PVC has. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#access-modes-1",
        ),
        col("StorageClass", "string", 0, "StorageClass of the pvc"),
        col(
            "VolumeAttributesClass",
            "string",
            0,
            "VolumeAttributesClass of the pvc",
        ),
        AGE_COLUMN,
        col(
            "VolumeMode",
            "string",
            1,
            "volumeMode defines what type of volume is required by the claim. Value of Filesystem is implied when not included in claim spec.",
        ),
    ],
    cells: pvc_cells,
    ..def_of::<corev1::PersistentVolumeClaim>(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
    )
};

/// storage.k8s.io/v1 storageclasses (cluster-scoped).
pub const STORAGECLASSES: ResourceDef = ResourceDef {
    namespaced: false,
    short_names: &["sc"],
    defaults: sc_defaults,
    validate: validate_sc,
    columns: &[
        NAME_COLUMN,
        col(
            "Provisioner",
            "string",
            0,
            "provisioner indicates the type of the provisioner.",
        ),
        col(
            "ReclaimPolicy",
            "string",
            0,
            "reclaimPolicy controls the reclaimPolicy for dynamically provisioned PersistentVolumes of this storage class. Defaults to Delete.",
        ),
        col(
            "VolumeBindingMode",
            "string",
            0,
            "volumeBindingMode indicates how PersistentVolumeClaims should be provisioned and bound.  When unset, VolumeBindingImmediate is used. This field is only honored by servers that enable the VolumeScheduling feature.",
        ),
        col(
            "AllowVolumeExpansion",
            "string",
            0,
            "allowVolumeExpansion shows whether the storage class allow volume expand.",
        ),
        AGE_COLUMN,
    ],
    cells: sc_cells,
    ..def_of::<storagev1::StorageClass>(
        "storage.k8s.io",
        "v1",
        "StorageClass",
        "storageclasses",
        "storageclass",
    )
};

/// Whether a StorageClass carries the default-class annotation (GA or beta) set to "true".
pub fn is_default_class(sc: &Value) -> bool {
    [DEFAULT_CLASS_ANNOTATION, BETA_DEFAULT_CLASS_ANNOTATION]
        .iter()
        .any(|a| s(sc, &["metadata", "annotations", a]) == "true")
}

/// `GetAccessModesAsString`: `RWO,ROX,RWX,RWOP` in that order, each once.
pub fn access_modes_string(modes: &[Value]) -> String {
    ACCESS_MODES
        .iter()
        .filter(|(m, _)| modes.iter().any(|v| v.as_str() == Some(m)))
        .map(|(_, short)| *short)
        .collect::<Vec<_>>()
        .join(",")
}

/// The class of a claim or volume: the beta annotation, else `spec.storageClassName`.
fn class_of(o: &Value) -> &str {
    match fields::at(o, &["metadata", "annotations", BETA_CLASS_ANNOTATION]) {
        Some(Value::String(c)) => c,
        _ => s(o, &["spec", "storageClassName"]),
    }
}

/// A quantity in Kubernetes' canonical form (`1024Mi` → `1Gi`), or as written if unparseable.
fn canonical(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "0".to_string(),
        Some(v) => Quantity::from_json(v)
            .map(|q| q.to_string())
            .unwrap_or_else(|| v.as_str().unwrap_or("").to_string()),
    }
}

fn phase_or_terminating(o: &Value) -> String {
    if present(o, &["metadata", "deletionTimestamp"]) {
        "Terminating".to_string()
    } else {
        s(o, &["status", "phase"]).to_string()
    }
}

fn unset_or(o: &Value, path: &[&str]) -> String {
    fields::str_at(o, path).unwrap_or("<unset>").to_string()
}

fn pv_defaults(o: &mut Value) {
    fields::default_at(o, &["status"], "phase", json!("Pending"));
    fields::default_at(
        o,
        &["spec"],
        "persistentVolumeReclaimPolicy",
        json!("Retain"),
    );
    fields::default_at(o, &["spec"], "volumeMode", json!("Filesystem"));
    if let Some(Value::Object(hp)) = o.pointer_mut("/spec/hostPath")
        && !hp.contains_key("type")
    {
        hp.insert("type".into(), json!(""));
    }
}

fn pvc_defaults(o: &mut Value) {
    fields::default_at(o, &["status"], "phase", json!("Pending"));
    fields::default_at(o, &["spec"], "volumeMode", json!("Filesystem"));
}

fn sc_defaults(o: &mut Value) {
    fields::default_at(o, &[], "reclaimPolicy", json!("Delete"));
    fields::default_at(o, &[], "volumeBindingMode", json!("Immediate"));
}

fn pv_cells(o: &Value) -> Vec<Value> {
    let claim = match fields::at(o, &["spec", "claimRef"]).filter(|v| v.is_object()) {
        Some(c) => format!("{}/{}", s(c, &["namespace"]), s(c, &["name"])),
        None => String::new(),
    };
    vec![
        name_cell(o),
        cell(canonical(fields::at(o, &["spec", "capacity", "storage"]))),
        cell(access_modes_string(arr(o, &["spec", "accessModes"]))),
        cell(s(o, &["spec", "persistentVolumeReclaimPolicy"])),
        cell(phase_or_terminating(o)),
        cell(claim),
        cell(class_of(o)),
        cell(unset_or(o, &["spec", "volumeAttributesClassName"])),
        cell(s(o, &["status", "reason"])),
        age_cell(o),
        cell(unset_or(o, &["spec", "volumeMode"])),
    ]
}

fn pvc_cells(o: &Value) -> Vec<Value> {
    let volume = s(o, &["spec", "volumeName"]);
    let (capacity, modes) = if volume.is_empty() {
        (String::new(), String::new())
    } else {
        (
            canonical(fields::at(o, &["status", "capacity", "storage"])),
            access_modes_string(arr(o, &["status", "accessModes"])),
        )
    };
    vec![
        name_cell(o),
        cell(phase_or_terminating(o)),
        cell(volume),
        cell(capacity),
        cell(modes),
        cell(class_of(o)),
        cell(unset_or(o, &["spec", "volumeAttributesClassName"])),
        age_cell(o),
        cell(unset_or(o, &["spec", "volumeMode"])),
    ]
}

fn sc_cells(o: &Value) -> Vec<Value> {
    let mut name = fields::name(o).to_string();
    if is_default_class(o) {
        name.push_str(" (default)");
    }
    let reclaim = fields::str_at(o, &["reclaimPolicy"]).unwrap_or("Delete");
    let binding = fields::str_at(o, &["volumeBindingMode"]).unwrap_or("Immediate");
    vec![
        cell(name),
        cell(s(o, &["provisioner"])),
        cell(reclaim),
        cell(binding),
        Value::Bool(boolean(o, &["allowVolumeExpansion"])),
        age_cell(o),
    ]
}

/// Access modes: required (with `required_detail`), each supported, ReadWriteOncePod alone.
fn validate_access_modes(
    errs: &mut Vec<FieldError>,
    modes: &[Value],
    field: &str,
    required_detail: &str,
) {
    if modes.is_empty() {
        errs.push(FieldError::required(field, required_detail));
    }
    let mut found_rwop = false;
    let mut found_other = false;
    for m in modes {
        let mode = m.as_str().unwrap_or("");
        if !SUPPORTED_ACCESS_MODES.contains(&mode) {
            errs.push(FieldError::not_supported(field, m, SUPPORTED_ACCESS_MODES));
        }
        if mode == "ReadWriteOncePod" {
            found_rwop = true;
        } else if SUPPORTED_ACCESS_MODES.contains(&mode) {
            found_other = true;
        }
    }
    if found_rwop && found_other {
        errs.push(FieldError::forbidden(
            field,
            "may not use ReadWriteOncePod with other access modes",
        ));
    }
}

fn validate_class_name(errs: &mut Vec<FieldError>, o: &Value, field: &str) {
    if let Some(c) = fields::str_at(o, &["spec", "storageClassName"]).filter(|c| !c.is_empty()) {
        push_invalid_all(errs, field, &json!(c), dns1123_subdomain(c));
    }
}

fn validate_volume_mode(errs: &mut Vec<FieldError>, o: &Value, field: &str) {
    if let Some(m) = fields::at(o, &["spec", "volumeMode"]).filter(|v| !v.is_null())
        && !matches!(m.as_str(), Some("Block" | "Filesystem"))
    {
        errs.push(FieldError::not_supported(
            field,
            m,
            &["Block", "Filesystem"],
        ));
    }
}

/// `validateVolumeNodeAffinity`: `required` must be set and its terms valid.
fn validate_node_affinity(errs: &mut Vec<FieldError>, o: &Value) -> bool {
    let Some(na) = fields::at(o, &["spec", "nodeAffinity"]).filter(|v| !v.is_null()) else {
        return false;
    };
    match na.get("required").filter(|v| !v.is_null()) {
        None => errs.push(FieldError::required(
            "spec.nodeAffinity.required",
            "must specify required node constraints",
        )),
        Some(req) => {
            if arr(req, &["nodeSelectorTerms"]).is_empty() {
                errs.push(FieldError::required(
                    "spec.nodeAffinity.required.nodeSelectorTerms",
                    "must have at least one node selector term",
                ));
            }
        }
    }
    true
}

/// `ValidatePersistentVolume` (+ `ValidatePersistentVolumeUpdate` with `old`).
fn validate_pv(o: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_access_modes(
        &mut errs,
        arr(o, &["spec", "accessModes"]),
        "spec.accessModes",
        "",
    );
    match obj(o, &["spec", "capacity"]).filter(|c| !c.is_empty()) {
        None => errs.push(FieldError::required("spec.capacity", "")),
        Some(cap) => {
            if !cap.contains_key("storage") || cap.len() > 1 {
                errs.push(invalid_capacity_keys(cap));
            }
            for (k, v) in cap {
                validate_quantity(&mut errs, &format!("spec.capacity[{k}]"), v, false);
            }
        }
    }
    let policy = fields::at(o, &["spec", "persistentVolumeReclaimPolicy"]);
    if let Some(p) = policy.filter(|p| !p.is_null())
        && !matches!(p.as_str(), Some("Delete" | "Recycle" | "Retain"))
    {
        errs.push(FieldError::not_supported(
            "spec.persistentVolumeReclaimPolicy",
            p,
            &["Delete", "Recycle", "Retain"],
        ));
    }
    validate_class_name(&mut errs, o, "spec.storageClassName");
    validate_volume_mode(&mut errs, o, "spec.volumeMode");
    let has_affinity = validate_node_affinity(&mut errs, o);
    let sources: Vec<&str> = PV_SOURCES
        .iter()
        .copied()
        .filter(|k| present(o, &["spec", k]))
        .collect();
    match sources.as_slice() {
        [] => errs.push(FieldError::required("spec", "must specify a volume type")),
        [_] => {}
        [_, rest @ ..] => {
            for k in rest {
                errs.push(FieldError::forbidden(
                    format!("spec.{k}"),
                    "may not specify more than 1 volume type",
                ));
            }
        }
    }
    if present(o, &["spec", "hostPath"]) {
        validate_local_path(
            &mut errs,
            s(o, &["spec", "hostPath", "path"]),
            "spec.hostPath.path",
        );
        let ty = s(o, &["spec", "hostPath", "type"]);
        const TYPES: &[&str] = &[
            "",
            "BlockDevice",
            "CharDevice",
            "Directory",
            "DirectoryOrCreate",
            "File",
            "FileOrCreate",
            "Socket",
        ];
        if !TYPES.contains(&ty) {
            errs.push(FieldError::not_supported(
                "spec.hostPath.type",
                &json!(ty),
                TYPES,
            ));
        }
    }
    if present(o, &["spec", "local"]) {
        validate_local_path(
            &mut errs,
            s(o, &["spec", "local", "path"]),
            "spec.local.path",
        );
        if !has_affinity {
            errs.push(FieldError::required(
                "spec.nodeAffinity",
                "Local volume requires node affinity",
            ));
        }
    }
    if let Some(old) = old {
        let source = |v: &Value| -> Map<String, Value> {
            PV_SOURCES
                .iter()
                .filter_map(|k| fields::at(v, &["spec", k]).map(|x| (k.to_string(), x.clone())))
                .collect()
        };
        if source(o) != source(old) {
            errs.push(FieldError::forbidden(
                "spec.persistentvolumesource",
                "spec.persistentvolumesource is immutable after creation",
            ));
        }
        immutable(
            &mut errs,
            "volumeMode",
            fields::at(o, &["spec", "volumeMode"]),
            fields::at(old, &["spec", "volumeMode"]),
        );
        if present(old, &["spec", "nodeAffinity"]) {
            immutable(
                &mut errs,
                "nodeAffinity",
                fields::at(o, &["spec", "nodeAffinity"]),
                fields::at(old, &["spec", "nodeAffinity"]),
            );
        }
    }
    errs
}

/// The `Unsupported value` of a capacity without `storage` or with other keys, rendered as Go
/// prints a `core.ResourceList`.
fn invalid_capacity_keys(cap: &Map<String, Value>) -> FieldError {
    let mut keys: Vec<&String> = cap.keys().collect();
    keys.sort();
    let rendered = keys
        .iter()
        .map(|k| format!("{k}:{}", canonical(cap.get(*k))))
        .collect::<Vec<_>>()
        .join(" ");
    FieldError {
        reason: "FieldValueNotSupported",
        field: "spec.capacity".into(),
        message: format!(
            "spec.capacity: Unsupported value: core.ResourceList{{{rendered}}}: supported values: \"storage\""
        ),
    }
}

/// `ValidatePathNoBacksteps` for local and hostPath volume paths (which are required).
fn validate_local_path(errs: &mut Vec<FieldError>, path: &str, field: &str) {
    if path.is_empty() {
        errs.push(FieldError::required(field, ""));
    } else if path.split('/').any(|seg| seg == "..") {
        errs.push(FieldError::invalid(
            field,
            &json!(path),
            "must not contain '..'",
        ));
    }
}

/// A quantity must parse and be ≥ 0 (or > 0 when `positive`).
fn validate_quantity(errs: &mut Vec<FieldError>, field: &str, v: &Value, positive: bool) {
    match Quantity::from_json(v) {
        None => errs.push(FieldError::invalid(
            field,
            v,
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
        )),
        Some(q) if positive && q.milli <= 0 => {
            errs.push(FieldError::invalid(field, v, "must be greater than zero"))
        }
        Some(q) if q.milli < 0 => errs.push(FieldError::invalid(
            field,
            v,
            "must be greater than or equal to 0",
        )),
        Some(_) => {}
    }
}

/// `ValidatePersistentVolumeClaim` (+ `ValidatePersistentVolumeClaimUpdate` with `old`).
fn validate_pvc(o: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_access_modes(
        &mut errs,
        arr(o, &["spec", "accessModes"]),
        "spec.accessModes",
        "at least 1 access mode is required",
    );
    if let Some(sel) = fields::at(o, &["spec", "selector"]).filter(|v| v.is_object()) {
        validate_label_selector(&mut errs, sel, "spec.selector");
    }
    match fields::at(o, &["spec", "resources", "requests", "storage"]) {
        None => errs.push(FieldError::required("spec.resources[storage]", "")),
        Some(v) => validate_quantity(&mut errs, "spec.resources[storage]", v, true),
    }
    validate_class_name(&mut errs, o, "spec.storageClassName");
    validate_volume_mode(&mut errs, o, "spec.volumeMode");
    if let Some(old) = old {
        validate_pvc_update(&mut errs, o, old);
    }
    errs
}

fn validate_pvc_update(errs: &mut Vec<FieldError>, o: &Value, old: &Value) {
    let mut new_spec = fields::at(o, &["spec"]).cloned().unwrap_or(json!({}));
    let mut old_spec = fields::at(old, &["spec"]).cloned().unwrap_or(json!({}));
    // The PV controller sets volumeName once.
    if s(old, &["spec", "volumeName"]).is_empty()
        && let (Value::Object(n), Value::Object(m)) = (&new_spec, &mut old_spec)
    {
        match n.get("volumeName") {
            Some(v) => m.insert("volumeName".into(), v.clone()),
            None => m.remove("volumeName"),
        };
    }
    // Only bound claims may change their storage request (expansion); the attributes class too.
    let bound = s(o, &["status", "phase"]) == "Bound";
    for spec in [&mut new_spec, &mut old_spec] {
        if let Value::Object(m) = spec {
            m.remove("volumeAttributesClassName");
            if bound
                && let Some(Value::Object(req)) =
                    m.get_mut("resources").and_then(|r| r.get_mut("requests"))
            {
                req.remove("storage");
            }
        }
    }
    let norm = |v: &Value| -> Value {
        let mut v = v.clone();
        if let Value::Object(m) = &mut v {
            m.retain(|_, x| !x.is_null());
        }
        v
    };
    if norm(&new_spec) != norm(&old_spec) {
        errs.push(FieldError::forbidden(
            "spec",
            "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
        ));
    }
    let size = |v: &Value| {
        fields::at(v, &["spec", "resources", "requests", "storage"]).and_then(Quantity::from_json)
    };
    if let (Some(new), Some(prev)) = (size(o), size(old))
        && new.milli < prev.milli
    {
        errs.push(FieldError::forbidden(
            "spec.resources.requests.storage",
            "field can not be less than previous value",
        ));
    }
}

/// `ValidateStorageClass` (+ `ValidateStorageClassUpdate` with `old`).
fn validate_sc(o: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let provisioner = s(o, &["provisioner"]);
    if provisioner.is_empty() {
        errs.push(FieldError::required("provisioner", ""));
    } else {
        for msg in crate::validation::qualified_name(&provisioner.to_lowercase()) {
            errs.push(FieldError::invalid(
                "provisioner",
                &json!(provisioner),
                &msg,
            ));
        }
    }
    if let Some(p) = fields::at(o, &["reclaimPolicy"]).filter(|v| !v.is_null())
        && !matches!(p.as_str(), Some("Delete" | "Retain"))
    {
        errs.push(FieldError::not_supported(
            "reclaimPolicy",
            p,
            &["Delete", "Retain"],
        ));
    }
    match fields::at(o, &["volumeBindingMode"]).filter(|v| !v.is_null()) {
        None => errs.push(FieldError::required("volumeBindingMode", "")),
        Some(m) if !matches!(m.as_str(), Some("Immediate" | "WaitForFirstConsumer")) => {
            errs.push(FieldError::not_supported(
                "volumeBindingMode",
                m,
                &["Immediate", "WaitForFirstConsumer"],
            ))
        }
        Some(_) => {}
    }
    if let Some(params) = obj(o, &["parameters"]) {
        if params.len() > 512 {
            errs.push(FieldError {
                reason: "FieldValueTooMany",
                field: "parameters".into(),
                message: format!(
                    "parameters: Too many: {}: must have at most 512 items",
                    params.len()
                ),
            });
        }
        for k in params.keys().filter(|k| k.is_empty()) {
            errs.push(FieldError::invalid(
                "parameters",
                &json!(k),
                "field can not be empty.",
            ));
        }
    }
    if let Some(old) = old {
        if o.get("parameters").filter(|v| !v.is_null())
            != old.get("parameters").filter(|v| !v.is_null())
        {
            errs.push(FieldError::forbidden(
                "parameters",
                "updates to parameters are forbidden.",
            ));
        }
        if provisioner != s(old, &["provisioner"]) {
            errs.push(FieldError::forbidden(
                "provisioner",
                "updates to provisioner are forbidden.",
            ));
        }
        if s(o, &["reclaimPolicy"]) != s(old, &["reclaimPolicy"]) {
            errs.push(FieldError::forbidden(
                "reclaimPolicy",
                "updates to reclaimPolicy are forbidden.",
            ));
        }
        immutable(
            &mut errs,
            "volumeBindingMode",
            fields::at(o, &["volumeBindingMode"]),
            fields::at(old, &["volumeBindingMode"]),
        );
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(errs: Vec<FieldError>) -> Vec<String> {
        errs.into_iter().map(|e| e.message).collect()
    }

    fn pvc(spec: Value) -> Value {
        let mut o = json!({"metadata": {"name": "data", "namespace": "default", "creationTimestamp": "2024-01-01T00:00:00Z"}, "spec": spec});
        pvc_defaults(&mut o);
        o
    }

    #[test]
    fn defaults_follow_kubernetes() {
        let mut pv = json!({"spec": {"hostPath": {"path": "/d"}}});
        pv_defaults(&mut pv);
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(pv["spec"]["volumeMode"], "Filesystem");
        assert_eq!(pv["spec"]["hostPath"]["type"], "");
        assert_eq!(pv["status"]["phase"], "Pending");
        let c = pvc(json!({}));
        assert_eq!(c["spec"]["volumeMode"], "Filesystem");
        assert_eq!(c["status"]["phase"], "Pending");
        let mut sc = json!({"provisioner": "rancher.io/local-path"});
        sc_defaults(&mut sc);
        assert_eq!(sc["reclaimPolicy"], "Delete");
        assert_eq!(sc["volumeBindingMode"], "Immediate");
    }

    #[test]
    fn claim_validation_messages() {
        let c = pvc(json!({}));
        assert_eq!(
            msgs(validate_pvc(&c, None)),
            [
                "spec.accessModes: Required value: at least 1 access mode is required",
                "spec.resources[storage]: Required value",
            ]
        );
        let c = pvc(
            json!({"accessModes": ["ReadWriteOncePod", "ReadWriteOnce", "Sometimes"],
            "resources": {"requests": {"storage": "0"}}, "storageClassName": "Bad_Class"}),
        );
        let m = msgs(validate_pvc(&c, None));
        assert_eq!(
            m[0],
            "spec.accessModes: Unsupported value: \"Sometimes\": supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOnce\", \"ReadWriteOncePod\""
        );
        assert_eq!(
            m[1],
            "spec.accessModes: Forbidden: may not use ReadWriteOncePod with other access modes"
        );
        assert_eq!(
            m[2],
            "spec.resources[storage]: Invalid value: \"0\": must be greater than zero"
        );
        assert!(m[3].starts_with(
            "spec.storageClassName: Invalid value: \"Bad_Class\": a lowercase RFC 1123 subdomain"
        ));
    }

    #[test]
    fn claim_spec_is_immutable_except_volume_name_once_and_bound_size() {
        let old = pvc(
            json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "local-path"}),
        );
        assert!(validate_pvc(&old, Some(&old)).is_empty());
        let mut bound = old.clone();
        bound["spec"]["volumeName"] = json!("pvc-1");
        assert!(
            validate_pvc(&bound, Some(&old)).is_empty(),
            "volumeName is set once"
        );
        let mut rebound = bound.clone();
        rebound["spec"]["volumeName"] = json!("pvc-2");
        assert_eq!(
            msgs(validate_pvc(&rebound, Some(&bound))),
            [
                "spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"
            ]
        );
        let mut bigger = bound.clone();
        bigger["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        assert_eq!(
            validate_pvc(&bigger, Some(&bound)).len(),
            1,
            "pending claims may not grow"
        );
        bigger["status"]["phase"] = json!("Bound");
        let mut bound_old = bound.clone();
        bound_old["status"]["phase"] = json!("Bound");
        assert!(validate_pvc(&bigger, Some(&bound_old)).is_empty());
        assert_eq!(
            msgs(validate_pvc(&bound_old, Some(&bigger))),
            [
                "spec.resources.requests.storage: Forbidden: field can not be less than previous value"
            ]
        );
    }

    #[test]
    fn volume_validation_messages() {
        let mut pv = json!({"metadata": {"name": "v"}, "spec": {"capacity": {"storage": "1Gi", "cpu": "1"}, "accessModes": []}});
        pv_defaults(&mut pv);
        assert_eq!(
            msgs(validate_pv(&pv, None)),
            [
                "spec.accessModes: Required value",
                "spec.capacity: Unsupported value: core.ResourceList{cpu:1 storage:1Gi}: supported values: \"storage\"",
                "spec: Required value: must specify a volume type",
            ]
        );
        let mut local = json!({"metadata": {"name": "v"}, "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "local": {"path": "/x/../y"}}});
        pv_defaults(&mut local);
        assert_eq!(
            msgs(validate_pv(&local, None)),
            [
                "spec.local.path: Invalid value: \"/x/../y\": must not contain '..'",
                "spec.nodeAffinity: Required value: Local volume requires node affinity",
            ]
        );
        let mut hp = json!({"metadata": {"name": "v"}, "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/data"}}});
        pv_defaults(&mut hp);
        assert!(validate_pv(&hp, None).is_empty());
        let mut moved = hp.clone();
        moved["spec"]["hostPath"]["path"] = json!("/other");
        assert_eq!(
            msgs(validate_pv(&moved, Some(&hp))),
            [
                "spec.persistentvolumesource: Forbidden: spec.persistentvolumesource is immutable after creation"
            ]
        );
    }

    #[test]
    fn storage_class_validation_messages() {
        let mut sc = json!({"metadata": {"name": "x"}, "provisioner": "", "reclaimPolicy": "Recycle", "volumeBindingMode": "Later"});
        assert_eq!(
            msgs(validate_sc(&sc, None)),
            [
                "provisioner: Required value",
                "reclaimPolicy: Unsupported value: \"Recycle\": supported values: \"Delete\", \"Retain\"",
                "volumeBindingMode: Unsupported value: \"Later\": supported values: \"Immediate\", \"WaitForFirstConsumer\"",
            ]
        );
        sc = json!({"metadata": {"name": "x"}, "provisioner": "rancher.io/local-path"});
        sc_defaults(&mut sc);
        let mut changed = sc.clone();
        changed["provisioner"] = json!("example.com/other");
        changed["volumeBindingMode"] = json!("WaitForFirstConsumer");
        assert_eq!(
            msgs(validate_sc(&changed, Some(&sc))),
            [
                "provisioner: Forbidden: updates to provisioner are forbidden.",
                "volumeBindingMode: Invalid value: \"WaitForFirstConsumer\": field is immutable",
            ]
        );
    }

    #[test]
    fn table_cells_as_kubectl_prints_them() {
        let mut pv = json!({"metadata": {"name": "pv1", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"capacity": {"storage": "1024Mi"}, "accessModes": ["ReadWriteMany", "ReadWriteOnce"],
                "hostPath": {"path": "/d"}, "storageClassName": "manual",
                "claimRef": {"namespace": "default", "name": "data"}},
            "status": {"phase": "Bound"}});
        pv_defaults(&mut pv);
        let c = pv_cells(&pv);
        assert_eq!(
            c[1..9],
            [
                json!("1Gi"),
                json!("RWO,RWX"),
                json!("Retain"),
                json!("Bound"),
                json!("default/data"),
                json!("manual"),
                json!("<unset>"),
                json!("")
            ]
        );
        assert_eq!(c[10], "Filesystem");
        let mut claim = pvc(
            json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "local-path"}),
        );
        let c = pvc_cells(&claim);
        assert_eq!(
            c[1..7],
            [
                json!("Pending"),
                json!(""),
                json!(""),
                json!(""),
                json!("local-path"),
                json!("<unset>")
            ]
        );
        claim["spec"]["volumeName"] = json!("pvc-1");
        claim["status"] = json!({"phase": "Bound", "capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteOnce"]});
        let c = pvc_cells(&claim);
        assert_eq!(
            c[1..5],
            [json!("Bound"), json!("pvc-1"), json!("2Gi"), json!("RWO")]
        );
        let mut sc = json!({"metadata": {"name": "local-path", "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
            "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer"});
        sc_defaults(&mut sc);
        let c = sc_cells(&sc);
        assert_eq!(
            c[..5],
            [
                json!("local-path (default)"),
                json!("rancher.io/local-path"),
                json!("Delete"),
                json!("WaitForFirstConsumer"),
                json!(false)
            ]
        );
    }
}
