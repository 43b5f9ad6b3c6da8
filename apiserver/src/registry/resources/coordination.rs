//! coordination.k8s.io/v1 entries: leases.

use k8s_openapi::api::coordination::v1 as coordv1;
use serde_json::{Value, json};

use super::util::*;
use crate::registry::*;

/// coordination.k8s.io/v1 leases.
pub const LEASES: ResourceDef = ResourceDef {
    validate: validate_lease,
    columns: &[
        NAME_COLUMN,
        col(
            "Holder",
            "string",
            0,
            "holderIdentity contains the identity of the holder of a current lease.",
        ),
        AGE_COLUMN,
    ],
    cells: |o| {
        vec![
            name_cell(o),
            cell(s(o, &["spec", "holderIdentity"])),
            age_cell(o),
        ]
    },
    ..def_of::<coordv1::Lease>("coordination.k8s.io", "v1", "Lease", "leases", "lease")
};

fn validate_lease(o: &Value, _old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(d) = fields::i64_at(o, &["spec", "leaseDurationSeconds"])
        && d <= 0
    {
        errs.push(FieldError::invalid(
            "spec.leaseDurationSeconds",
            &json!(d),
            "must be greater than 0",
        ));
    }
    nonnegative(
        &mut errs,
        o,
        &["spec", "leaseTransitions"],
        "spec.leaseTransitions",
    );
    if present(o, &["spec", "preferredHolder"]) && !present(o, &["spec", "strategy"]) {
        errs.push(FieldError::forbidden(
            "spec.preferredHolder",
            "may only be specified if `strategy` is defined",
        ));
    }
    errs
}
