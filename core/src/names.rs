//! Kubernetes' name checks with their exact messages (`k8s.io/apimachinery/pkg/util/validation`):
//! RFC 1123 labels and subdomains, RFC 1035 labels, and the "must be no more than N characters"
//! message. Each check returns the problems found; an empty list means the value is valid.

/// `DNS1123LabelMaxLength`.
pub const DNS1123_LABEL_MAX_LENGTH: usize = 63;
/// `DNS1123SubdomainMaxLength`.
pub const DNS1123_SUBDOMAIN_MAX_LENGTH: usize = 253;
/// `DNS1035LabelMaxLength`.
pub const DNS1035_LABEL_MAX_LENGTH: usize = 63;

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// `MaxLenError`: "must be no more than N characters".
pub fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

/// Whether `v` matches `[a-z0-9]([-a-z0-9]*[a-z0-9])?` (no length limit).
fn matches_dns1123_label(v: &str) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Whether `v` is dot-separated RFC 1123 labels (no length limit).
fn matches_dns1123_subdomain(v: &str) -> bool {
    v.split('.').all(matches_dns1123_label)
}

/// `IsDNS1123Label`: at most 63 of `[-a-z0-9]`, starting and ending alphanumeric. A value that
/// would be a valid subdomain is told it "must not contain dots", as Kubernetes does.
pub fn dns1123_label(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > DNS1123_LABEL_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_LABEL_MAX_LENGTH));
    }
    if !matches_dns1123_label(v) {
        if matches_dns1123_subdomain(v) {
            errs.push("must not contain dots".to_string());
        } else {
            errs.push(DNS1123_LABEL_MSG.to_string());
        }
    }
    errs
}

/// `IsDNS1123Subdomain`: at most 253 characters of dot-separated RFC 1123 labels.
pub fn dns1123_subdomain(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > DNS1123_SUBDOMAIN_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX_LENGTH));
    }
    if !matches_dns1123_subdomain(v) {
        errs.push(DNS1123_SUBDOMAIN_MSG.to_string());
    }
    errs
}

/// `IsDNS1035Label`: an RFC 1123 label of at most 63 characters that starts with a letter.
pub fn dns1035_label(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > DNS1035_LABEL_MAX_LENGTH {
        errs.push(max_len_error(DNS1035_LABEL_MAX_LENGTH));
    }
    if !matches_dns1123_label(v) || !v.as_bytes()[0].is_ascii_lowercase() {
        errs.push(DNS1035_LABEL_MSG.to_string());
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1123_labels() {
        assert!(dns1123_label("web-1").is_empty());
        assert!(dns1123_label("1abc").is_empty());
        assert_eq!(dns1123_label("Web"), [DNS1123_LABEL_MSG]);
        assert_eq!(dns1123_label(""), [DNS1123_LABEL_MSG]);
        assert_eq!(dns1123_label("-a"), [DNS1123_LABEL_MSG]);
        assert_eq!(dns1123_label("a.b"), ["must not contain dots"]);
        assert_eq!(
            dns1123_label(&"a".repeat(64)),
            ["must be no more than 63 characters"]
        );
        assert_eq!(
            dns1123_label(&format!("{}.b", "a".repeat(63))),
            [
                "must be no more than 63 characters",
                "must not contain dots"
            ]
        );
    }

    #[test]
    fn rfc1123_subdomains() {
        assert!(dns1123_subdomain("a.b-c").is_empty());
        assert!(dns1123_subdomain(&"a".repeat(253)).is_empty());
        assert_eq!(dns1123_subdomain("a..b"), [DNS1123_SUBDOMAIN_MSG]);
        assert_eq!(dns1123_subdomain(""), [DNS1123_SUBDOMAIN_MSG]);
        assert_eq!(dns1123_subdomain("a.-b"), [DNS1123_SUBDOMAIN_MSG]);
        assert_eq!(
            dns1123_subdomain(&"a".repeat(254)),
            ["must be no more than 253 characters"]
        );
        assert!(DNS1123_SUBDOMAIN_MSG.ends_with(
            r"regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        ));
    }

    #[test]
    fn rfc1035_labels() {
        assert!(dns1035_label("my-name").is_empty());
        assert_eq!(dns1035_label("1abc"), [DNS1035_LABEL_MSG]);
        assert_eq!(dns1035_label(""), [DNS1035_LABEL_MSG]);
        assert_eq!(dns1035_label("a.b"), [DNS1035_LABEL_MSG]);
        assert_eq!(
            dns1035_label(&"a".repeat(64)),
            ["must be no more than 63 characters"]
        );
    }
}
