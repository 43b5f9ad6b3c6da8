//! The apiserver's modules must not import each other in circles (issue 12). Today some do (the
//! known circle below, around `server.rs`'s `AppState`); this check fails when a module that is
//! not in that list joins a circle, so the debt can only shrink. When a refactor takes modules
//! out of the circle, remove them from `KNOWN` (the test says which).
//!
//! A module's imports are its `crate::<module>` paths (in `use` lines and inline paths); a
//! module is a top-level file or directory of `apiserver/src`.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Modules in an import circle when this check was written.
const KNOWN: &[&str] = &[
    "admission",
    "alloc",
    "auth",
    "authn",
    "bootstrap_rbac",
    "cacher",
    "components",
    "discovery",
    "endpoint_reconciler",
    "error",
    "handlers",
    "impersonation",
    "list",
    "managed",
    "node_authorizer",
    "openapi",
    "openapi_v2",
    "patch",
    "protobuf",
    "proxy",
    "rbac",
    "registry",
    "request",
    "reviews",
    "schema_strategy",
    "server",
    "strategic",
    "subresources",
    "table",
    "tls",
    "tokenrequest",
    "watch",
];

fn rs_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// module → the modules it references through `crate::`.
fn import_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rs_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap_or(&f);
        let first = rel
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        let module = first.trim_end_matches(".rs").to_string();
        if matches!(module.as_str(), "lib" | "main" | "fuzzing") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let deps = graph.entry(module.clone()).or_default();
        // `use crate::{a, b::c}` and `crate::x::y` anywhere.
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                group[..end]
                    .split(',')
                    .map(|s| s.trim().split("::").next().unwrap_or(""))
                    .collect()
            } else {
                vec![
                    rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .next()
                        .unwrap_or(""),
                ]
            };
            for n in names {
                if !n.is_empty()
                    && n != module
                    && n.chars().next().is_some_and(|c| c.is_lowercase())
                {
                    deps.insert(n.to_string());
                }
            }
        }
    }
    // Only edges to real modules.
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| modules.contains(d));
    }
    graph
}

/// Modules that are part of a circle: strongly connected components with more than one member.
fn modules_in_circles(graph: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(m) = stack.pop() {
            for d in graph.get(&m).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    stack.push(d.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|m| (m, reach(m))).collect();
    graph
        .keys()
        .filter(|m| {
            reachable[*m]
                .iter()
                .any(|d| d != *m && reachable.get(d).is_some_and(|r| r.contains(*m)))
        })
        .cloned()
        .collect()
}

#[test]
fn no_module_joins_an_import_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = import_graph(&src);
    assert!(graph.len() > 20, "modules found: {:?}", graph.keys());
    let circled = modules_in_circles(&graph);
    let known: BTreeSet<String> = KNOWN.iter().map(|s| s.to_string()).collect();
    let new: Vec<&String> = circled.difference(&known).collect();
    assert!(
        new.is_empty(),
        "modules newly in an import circle: {new:?}; hand them a narrow handle instead of importing their caller (see STYLE and ARCHITECTURE.md)"
    );
    let gone: Vec<&String> = known.difference(&circled).collect();
    println!(
        "{} of {} apiserver modules are in an import circle; left the circle (remove from KNOWN): {gone:?}",
        circled.len(),
        graph.len()
    );
}

#[test]
fn the_check_finds_a_circle() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.insert("a".into(), ["b".to_string()].into());
    g.insert("b".into(), ["c".to_string()].into());
    g.insert("c".into(), ["a".to_string()].into());
    g.insert("d".into(), ["a".to_string()].into());
    let c = modules_in_circles(&g);
    assert_eq!(c, ["a", "b", "c"].map(String::from).into());
}
