//! The layering, checked by machine: every source file under `src/` is read as text, the
//! modules of the crate (and the outside crates in [`RULES`]) it names are collected, and each
//! name a rule forbids fails the test, unless it is one of the [`KNOWN_VIOLATIONS`]. A known
//! violation that has gone away fails the test too, so the list only ever shrinks by being
//! edited.
//!
//! A file belongs to the top-level module it sits in (`src/media/engine.rs` is `media`). What
//! counts as naming a module: a `crate::<module>` path, `crate::{<module>…}` groups included,
//! and for outside crates a `<crate>::` path. Comments are skipped, so doc links do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Everything of ours but domain, and tokio: what the pure modules must not name.
const ALL_BUT_DOMAIN: &[&str] = &[
    "api",
    "app",
    "cli",
    "config",
    "config_file",
    "control",
    "forwarding",
    "media",
    "reach",
    "runtime",
    "signaling",
    "store",
    "token",
    "webhooks",
    "tokio",
];

/// What a module must not name: (module, forbidden modules or outside crates, why). A module
/// naming itself is never a violation.
const RULES: &[(&str, &[&str], &str)] = &[
    // The vocabulary of everything else: pure, it depends on nothing else of ours.
    (
        "domain",
        ALL_BUT_DOMAIN,
        "domain is pure and depends on nothing else of ours",
    ),
    // The pure compiler: rules in, tables and diffs out; only domain types.
    (
        "forwarding",
        ALL_BUT_DOMAIN,
        "forwarding is a pure compiler over domain types",
    ),
    // The SFU is sans-IO: no tokio, no sockets of its own, and it decides nothing about the
    // store or who may connect; the runtime drives it, control tells it what to forward.
    (
        "media",
        &[
            "api",
            "app",
            "control",
            "runtime",
            "signaling",
            "store",
            "tokio",
        ],
        "media is a sans-IO engine over domain and forwarding types",
    ),
    // Persistence knows the domain (and keeps the webhook slice's outbox in that slice's
    // terms); it is called, it never calls up.
    (
        "store",
        &["api", "app", "control", "media", "runtime", "signaling"],
        "store depends on domain and the webhook slice's types only",
    ),
    // Webhooks are sans-IO: event bodies, signing, retry schedule, dispatch decisions and the
    // destination policy over domain types. Control raises the events (a domain type), the
    // store keeps the outbox, the runtime delivers: none of them is named here.
    (
        "webhooks",
        ALL_BUT_DOMAIN,
        "webhooks is a sans-IO slice over domain types",
    ),
    // Device tokens: signing and verifying, over domain ids.
    (
        "token",
        ALL_BUT_DOMAIN,
        "token signs and verifies over domain types only",
    ),
    // The public addresses (and the STUN client for `auto`): it decides nothing else.
    (
        "reach",
        &[
            "api",
            "app",
            "cli",
            "config",
            "control",
            "media",
            "runtime",
            "signaling",
            "store",
            "webhooks",
        ],
        "reach finds the addresses to advertise and names nothing else of ours",
    ),
    // Flags and the config file become settings; nothing is driven from here.
    (
        "config",
        &["cli", "control", "media", "signaling"],
        "config parses flags into settings and drives nothing",
    ),
    (
        "config_file",
        &[
            "api",
            "cli",
            "control",
            "media",
            "runtime",
            "signaling",
            "store",
            "webhooks",
        ],
        "the config file maps to flags only",
    ),
    // The operator commands read through control and the store; they drive no media.
    (
        "cli",
        &["media", "runtime", "signaling"],
        "the operator CLI reads through control and the store and drives no media",
    ),
    // The composition root: it wires every layer together, so it may name any.
    ("app", &[], "app wires the layers together"),
    // The orchestrator talks to the media plane through a port it defines: it never names
    // the runtime or the adapters that call it.
    (
        "control",
        &["api", "app", "runtime", "signaling"],
        "control never imports the runtime or its adapters",
    ),
    // The REST adapter parses, calls control and renders: no SQL, no media, no runtime.
    (
        "api",
        &["app", "media", "runtime", "signaling", "store"],
        "api calls control only",
    ),
    // The device adapter calls control; the vocabulary of negotiations is the domain's, so it
    // names neither the media plane nor the runtime that drives it, nor the store.
    (
        "signaling",
        &["api", "app", "media", "runtime", "store"],
        "signaling calls control only (its vocabulary is the domain's)",
    ),
    // The drivers pump the engines and hold no decisions: admission and what a store error
    // means are control's.
    (
        "runtime",
        &["api", "app", "signaling", "store"],
        "runtime decides nothing: no store, no adapters",
    ),
];

/// Violations today's code still has: (file, what it names). None since control became the
/// only door (signaling and the SIP runtime call control's device verbs; store errors stop at
/// control); a new one must be fixed, not listed.
const KNOWN_VIOLATIONS: &[(&str, &str)] = &[];

/// Every `.rs` file under `dir`, sorted.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The top-level module a file under `src/` belongs to (`media/engine.rs` → `media`).
fn module_of(relative: &Path) -> String {
    let first = relative
        .components()
        .next()
        .expect("a path under src")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.strip_suffix(".rs").unwrap_or(&first).to_owned()
}

/// The source without `//` comments (line and doc comments).
fn without_comments(source: &str) -> String {
    source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn identifier(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first segment of each item of a `{…}` use group starting at `group` (just after `{`).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut at_item_start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => at_item_start = true,
            c if c.is_whitespace() => {}
            _ if at_item_start && depth == 0 => {
                let head = identifier(&group[i..]);
                if !head.is_empty() {
                    heads.push(head.to_owned());
                }
                at_item_start = false;
            }
            _ => {}
        }
    }
    heads
}

/// The crate modules (`crate::x`) and the outside crates among `outside` that `source` names.
fn named(source: &str, outside: &[&str]) -> BTreeSet<String> {
    let code = without_comments(source);
    let mut names = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        // `patchbay_crate::` or `foo_crate::` are other names, not `crate::`.
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            names.extend(group_heads(group));
        } else {
            let head = identifier(rest);
            if !head.is_empty() {
                names.insert(head.to_owned());
            }
        }
    }
    for name in outside {
        let path = format!("{name}::");
        let found = code.match_indices(&path).any(|(at, _)| {
            let before = code[..at].chars().next_back();
            !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        });
        if found || code.contains(&format!("use {name};")) {
            names.insert((*name).to_owned());
        }
    }
    names
}

/// Every (file, forbidden name) in the crate's sources.
fn violations(root: &Path) -> BTreeSet<(String, String)> {
    let src = root.join("src");
    let outside: Vec<&str> = RULES
        .iter()
        .flat_map(|(_, forbidden, _)| forbidden.iter().copied())
        .filter(|name| !src.join(name).exists() && !src.join(format!("{name}.rs")).exists())
        .collect();
    let mut found = BTreeSet::new();
    for path in sources(&src) {
        let relative = path.strip_prefix(&src).expect("under src");
        let module = module_of(relative);
        let Some((_, forbidden, _)) = RULES.iter().find(|(m, _, _)| *m == module) else {
            continue;
        };
        let source = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        for name in named(&source, &outside) {
            if name != module && forbidden.contains(&name.as_str()) {
                let file = format!("src/{}", relative.to_string_lossy().replace('\\', "/"));
                found.insert((file, name));
            }
        }
    }
    found
}

/// The crate root's files, which only declare the modules.
const ROOTS: &[&str] = &["lib", "main"];

#[test]
fn every_module_has_a_rule() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules: BTreeSet<String> = sources(&src)
        .iter()
        .map(|p| module_of(p.strip_prefix(&src).expect("under src")))
        .collect();
    let unruled: Vec<&String> = modules
        .iter()
        .filter(|m| !ROOTS.contains(&m.as_str()) && !RULES.iter().any(|(r, _, _)| r == m))
        .collect();
    assert!(
        unruled.is_empty(),
        "modules without a layering rule: {unruled:?} (add one to RULES)"
    );
}

#[test]
fn modules_import_only_what_their_layer_allows() {
    let found = violations(Path::new(env!("CARGO_MANIFEST_DIR")));
    let known: BTreeSet<(String, String)> = KNOWN_VIOLATIONS
        .iter()
        .map(|(f, n)| ((*f).to_owned(), (*n).to_owned()))
        .collect();
    let new: Vec<String> = found
        .difference(&known)
        .map(|(file, name)| {
            let module = module_of(Path::new(file.trim_start_matches("src/")));
            let why = RULES
                .iter()
                .find(|(m, _, _)| *m == module)
                .map_or("", |(_, _, why)| why);
            format!("{file} names `{name}` ({why})")
        })
        .collect();
    let gone: Vec<String> = known
        .difference(&found)
        .map(|(file, name)| {
            format!("{file} no longer names `{name}`: remove it from KNOWN_VIOLATIONS")
        })
        .collect();
    assert!(
        new.is_empty() && gone.is_empty(),
        "layering:\n{}",
        new.iter()
            .chain(&gone)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn every_rule_names_a_module_that_exists() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for (module, _, _) in RULES {
        assert!(
            src.join(module).is_dir() || src.join(format!("{module}.rs")).is_file(),
            "rule for a module that does not exist: {module}"
        );
    }
    for (file, _) in KNOWN_VIOLATIONS {
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(file).is_file(),
            "known violation in a file that does not exist: {file}"
        );
    }
}

#[test]
fn the_scanner_sees_paths_groups_and_outside_crates_but_not_comments() {
    let source = "\
//! Links to [`crate::runtime`] in docs do not count.
use crate::{domain::SessionId, store::{Store, StoreError}};
use crate::media::Engine; // crate::api in a comment does not count
fn f() { tokio::spawn(async {}); let _ = my_crate::x; }
";
    let names = named(source, &["tokio"]);
    let want: BTreeSet<String> = ["domain", "media", "store", "tokio"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(names, want);
    assert!(named("use tokio_util::x;", &["tokio"]).is_empty());
}

/// The modules of `src/<dir>` that each of its files names through `super::` (outside
/// comments and test modules): a path `super::x::…`, `super::{x, …}` or `use super::x;`.
/// Names re-exported by `mod.rs` (`super::Engine`) are not module names and do not count.
fn sibling_imports(dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .filter(|m| m != "mod")
        .collect();
    let mut graph = BTreeMap::new();
    for path in &files {
        let Some(module) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
            continue;
        };
        if module == "mod" {
            continue;
        }
        let source = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let code = without_comments(&source);
        let code = code.split("#[cfg(test)]").next().unwrap_or_default();
        let mut names = BTreeSet::new();
        for (at, _) in code.match_indices("super::") {
            let rest = &code[at + "super::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                names.extend(group_heads(group));
            } else {
                names.insert(identifier(rest).to_owned());
            }
        }
        names.retain(|n| n != &module && modules.contains(n));
        graph.insert(module, names);
    }
    graph
}

/// A circle in `graph`, if there is one (its modules in order, the first repeated last).
fn a_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        graph: &BTreeMap<String, BTreeSet<String>>,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(graph, next, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|start| visit(graph, start, &mut Vec::new(), &mut done))
}

/// Issue 21, step 7: the media plane's parts import each other without a circle (shared key
/// types live in `keys.rs`, the engine's outputs in `output.rs`, so no part needs another
/// for a name).
#[test]
fn the_parts_of_the_media_plane_import_each_other_without_a_circle() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/media");
    let graph = sibling_imports(&dir);
    assert!(graph.len() > 10, "read the parts: {graph:?}");
    assert!(
        graph.get("engine").is_some_and(|d| d.contains("relay")),
        "the scanner sees the engine import the relay: {graph:?}"
    );
    assert_eq!(a_circle(&graph), None, "{graph:?}");
    // The check itself finds a circle when there is one.
    let mut looped = graph.clone();
    looped
        .entry("keys".into())
        .or_default()
        .insert("engine".into());
    assert!(a_circle(&looped).is_some());
}
