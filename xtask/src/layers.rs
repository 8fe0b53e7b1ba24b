//! The suite's `module-layers` step: the hypervisor's modules
//! (microvisor/src) form layers, and a module uses only its own layer and
//! the layers below it (docs/design.md, "Layers"):
//!
//! | layer | modules |
//! |---|---|
//! | base | `arch/*` (but the entry files), `mm/*`, `log`, `time`, `cmdline` |
//! | state | `domain` (`Hv`, the domains and vCPUs), `sched::runq` (the run queues), `hcall`, `audit` |
//! | subsystems | `build`, `events`, `fifo`, `footprint`, `grant`, `irq`, `lifecycle`, `memory`, `mmu`, `pv`, `sched`, `vcpu` |
//! | dispatch | `hypercall`, `trap` |
//! | entry | `main` (the crate root), `arch::boot`, `arch::stubs` |
//!
//! What the step reads: every `crate::a::b` path in a file's code (not its
//! comments or string literals), `use crate::{..}` groups entry by entry,
//! and `super::x` in `arch/` and `mm/`. A path names the module file it
//! reaches (`crate::mm::frames::with` is `mm::frames`, `crate::mm::PAGE` is
//! `mm`); `crate::info!` and the other log macros are `log`'s, any other
//! item at the crate root is `main`'s. Each module file must have a layer
//! here; an edge to a higher layer fails unless [`EXCEPTIONS`] lists it,
//! and a listed exception that no longer occurs fails too, so the list
//! only shrinks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Layer {
    Base,
    State,
    Subsystems,
    Dispatch,
    Entry,
}

impl Layer {
    fn name(self) -> &'static str {
        match self {
            Layer::Base => "base",
            Layer::State => "state",
            Layer::Subsystems => "subsystems",
            Layer::Dispatch => "dispatch",
            Layer::Entry => "entry",
        }
    }
}

/// Each module file of microvisor/src and its layer (`arch` is
/// arch/mod.rs, `arch::smp` arch/smp.rs, `main` main.rs).
pub const LAYERS: &[(&str, Layer)] = &[
    ("arch", Layer::Base),
    ("arch::apic", Layer::Base),
    ("arch::cpu", Layer::Base),
    ("arch::desc", Layer::Base),
    ("arch::entry", Layer::Base),
    ("arch::ioapic", Layer::Base),
    ("arch::percpu", Layer::Base),
    ("arch::port", Layer::Base),
    ("arch::smp", Layer::Base),
    ("mm", Layer::Base),
    ("mm::frames", Layer::Base),
    ("mm::guest", Layer::Base),
    ("mm::heap", Layer::Base),
    ("mm::paging", Layer::Base),
    ("mm::stacks", Layer::Base),
    ("log", Layer::Base),
    ("time", Layer::Base),
    ("cmdline", Layer::Base),
    ("domain", Layer::State),
    ("hcall", Layer::State),
    ("audit", Layer::State),
    ("build", Layer::Subsystems),
    ("events", Layer::Subsystems),
    ("fifo", Layer::Subsystems),
    ("footprint", Layer::Subsystems),
    ("grant", Layer::Subsystems),
    ("irq", Layer::Subsystems),
    ("lifecycle", Layer::Subsystems),
    ("memory", Layer::Subsystems),
    ("mmu", Layer::Subsystems),
    ("pv", Layer::Subsystems),
    ("sched", Layer::Subsystems),
    ("sched::runq", Layer::State),
    ("vcpu", Layer::Subsystems),
    ("hypercall", Layer::Dispatch),
    ("trap", Layer::Dispatch),
    ("main", Layer::Entry),
    ("arch::boot", Layer::Entry),
    ("arch::stubs", Layer::Entry),
];

/// The edges up that remain, each with why (from module, to module,
/// reason). The one left is the `domain.rs` hub's: `Hv` holds the
/// scheduler's sets of vCPUs, so adding a vCPU places it on a run queue.
/// It goes when those sets are the scheduler's (docs/smp.md, step 2). The
/// step fails on an entry that no longer occurs: delete it.
pub const EXCEPTIONS: &[(&str, &str, &str)] = &[];

/// One edge as found: the first line that makes it.
#[derive(Debug)]
struct Edge {
    file: String,
    line: usize,
}

/// The `module-layers` step over `root`'s microvisor/src: Ok with a
/// summary, or every problem found, one per line.
pub fn check(root: &Path) -> Result<String, String> {
    let src = root.join("microvisor/src");
    let mut files = Vec::new();
    collect(&src, &src, &mut files).map_err(|e| format!("reading {}: {e}", src.display()))?;
    files.sort();
    check_sources(&files, LAYERS, EXCEPTIONS).map_err(|p| p.join("\n  "))
}

fn collect(base: &Path, dir: &Path, out: &mut Vec<(String, String)>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect(base, &p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p
                .strip_prefix(base)
                .expect("under base")
                .to_string_lossy()
                .replace('\\', "/");
            out.push((rel, std::fs::read_to_string(&p)?));
        }
    }
    Ok(())
}

/// The module a file (path relative to microvisor/src) is.
fn module_of(rel: &str) -> String {
    let stem = rel.strip_suffix(".rs").unwrap_or(rel);
    let stem = stem.strip_suffix("/mod").unwrap_or(stem);
    stem.replace('/', "::")
}

/// The check itself, on `files` (path relative to microvisor/src, text).
fn check_sources(
    files: &[(String, String)],
    layers: &[(&str, Layer)],
    exceptions: &[(&str, &str, &str)],
) -> Result<String, Vec<String>> {
    let layer: BTreeMap<&str, Layer> = layers.iter().copied().collect();
    let modules: BTreeSet<String> = files.iter().map(|(f, _)| module_of(f)).collect();
    let mut problems = Vec::new();
    for m in &modules {
        if !layer.contains_key(m.as_str()) {
            problems.push(format!(
                "module `{m}` has no layer: add it to LAYERS in xtask/src/layers.rs (and docs/design.md's table)"
            ));
        }
    }
    // (from, to) -> where it first occurs.
    let mut edges: BTreeMap<(String, String), Edge> = BTreeMap::new();
    for (file, text) in files {
        let from = module_of(file);
        for (line, to) in references(file, text, &modules) {
            if to != from {
                edges.entry((from.clone(), to)).or_insert(Edge {
                    file: file.clone(),
                    line,
                });
            }
        }
    }
    let allowed: BTreeSet<(&str, &str)> = exceptions.iter().map(|&(f, t, _)| (f, t)).collect();
    let mut used = BTreeSet::new();
    let mut up = 0;
    for ((from, to), e) in &edges {
        let (Some(&lf), Some(&lt)) = (layer.get(from.as_str()), layer.get(to.as_str())) else {
            continue; // reported above
        };
        if lt <= lf {
            continue;
        }
        if allowed.contains(&(from.as_str(), to.as_str())) {
            used.insert((from.as_str(), to.as_str()));
            up += 1;
            continue;
        }
        problems.push(format!(
            "microvisor/src/{}:{}: `{from}` ({}) uses `{to}` ({}): a module may use only its own layer and those below (base < state < subsystems < dispatch < entry); pass what it needs down as an argument or a hook registered at boot (docs/design.md, \"Layers\")",
            e.file,
            e.line,
            lf.name(),
            lt.name()
        ));
    }
    for &(from, to, _) in exceptions {
        if !used.contains(&(from, to)) {
            problems.push(format!(
                "EXCEPTIONS lists `{from}` -> `{to}`, which no longer occurs: delete it from xtask/src/layers.rs"
            ));
        }
    }
    if problems.is_empty() {
        Ok(format!(
            "{} modules, {} edges, {up} listed exceptions up",
            modules.len(),
            edges.len()
        ))
    } else {
        Err(problems)
    }
}

/// Rust text with comments and the contents of string and char literals
/// blanked (newlines kept, so line numbers stay).
fn code_only(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && (i == 0 || !is_ident(b[i - 1]))
            && raw_start(&b, i + 1).is_some()
        {
            // r"..." or r#"..."#: ends at a quote followed by as many #.
            let hashes = raw_start(&b, i + 1).expect("checked");
            let body = i + 2 + hashes;
            out.extend(core::iter::repeat_n(' ', body - i));
            i = body;
            while i < b.len() {
                if b[i] == '"' && (1..=hashes).all(|k| b.get(i + k) == Some(&'#')) {
                    out.extend(core::iter::repeat_n(' ', hashes + 1));
                    i += hashes + 1;
                    break;
                }
                out.push(blank(b[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' && i + 1 < b.len() {
                    out.push(' ');
                    i += 1;
                }
                out.push(blank(b[i]));
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && (next == Some('\\') || b.get(i + 2) == Some(&'\'')) {
            // A char literal ('x', '\n', '\u{..}'); a lifetime has no
            // closing quote there and is left alone.
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '\'' {
                if b[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                out.push(' ');
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// At `b[i]` (after an `r`): the number of `#` before the opening quote of
/// a raw string, or None if this is not one.
fn raw_start(b: &[char], i: usize) -> Option<usize> {
    let n = b[i..].iter().take_while(|&&c| c == '#').count();
    (b.get(i + n) == Some(&'"')).then_some(n)
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every module `file` refers to, with the line: `crate::` paths (and
/// their `{..}` groups), and `super::` paths in a directory module's files.
fn references(file: &str, text: &str, modules: &BTreeSet<String>) -> Vec<(usize, String)> {
    let code: Vec<char> = code_only(text).chars().collect();
    let dir = file.rsplit_once('/').map(|(d, _)| d.replace('/', "::"));
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < code.len() {
        if code[i] == '\n' {
            line += 1;
            i += 1;
            continue;
        }
        let starts_word = i == 0 || !is_ident(code[i - 1]);
        let prefix = if starts_word && matches_at(&code, i, "crate::") {
            Some((Vec::new(), "crate::".len()))
        } else if starts_word && matches_at(&code, i, "super::") {
            dir.as_ref()
                .map(|d| (d.split("::").map(String::from).collect(), "super::".len()))
        } else {
            None
        };
        if let Some((base, skip)) = prefix {
            let mut j = i + skip;
            for path in paths(&code, &mut j, base) {
                if let Some(m) = resolve(&path, modules) {
                    out.push((line, m));
                }
            }
            line += code[i..j].iter().filter(|&&c| c == '\n').count();
            i = j;
            continue;
        }
        i += 1;
    }
    out
}

fn matches_at(code: &[char], i: usize, s: &str) -> bool {
    s.chars()
        .enumerate()
        .all(|(k, c)| code.get(i + k) == Some(&c))
}

/// The paths written at `code[*j..]` after `base::` (one, or several for a
/// `{a, b::c}` group); moves `*j` past them.
fn paths(code: &[char], j: &mut usize, base: Vec<String>) -> Vec<Vec<String>> {
    let mut path = base;
    loop {
        while code.get(*j).is_some_and(|c| c.is_whitespace()) {
            *j += 1;
        }
        if code.get(*j) == Some(&'{') {
            *j += 1;
            let mut all = Vec::new();
            loop {
                while code.get(*j).is_some_and(|c| c.is_whitespace() || *c == ',') {
                    *j += 1;
                }
                match code.get(*j) {
                    None => return all,
                    Some('}') => {
                        *j += 1;
                        return all;
                    }
                    _ => {}
                }
                let before = *j;
                all.extend(paths(code, j, path.clone()));
                // Skip what follows the entry (`as x`), up to `,` or `}`.
                while code.get(*j).is_some_and(|&c| c != ',' && c != '}') {
                    *j += 1;
                }
                if *j == before {
                    *j += 1;
                }
            }
        }
        let start = *j;
        while code.get(*j).is_some_and(|&c| is_ident(c)) {
            *j += 1;
        }
        if *j == start {
            // `*` or nothing: the path so far.
            return vec![path];
        }
        path.push(code[start..*j].iter().collect());
        if matches_at(code, *j, "::") {
            *j += 2;
        } else {
            return vec![path];
        }
    }
}

/// The module file a path from the crate root reaches.
fn resolve(path: &[String], modules: &BTreeSet<String>) -> Option<String> {
    let mut p: Vec<&str> = Vec::new();
    for seg in path {
        match seg.as_str() {
            "self" => {}
            "super" => {
                p.pop();
            }
            s => p.push(s),
        }
    }
    let path = p;
    let first = *path.first()?;
    if ["info", "warn", "debug", "error"].contains(&first) {
        return Some("log".into());
    }
    let mut found = None;
    let mut name = String::new();
    for (k, seg) in path.iter().enumerate() {
        if k > 0 {
            name.push_str("::");
        }
        name.push_str(seg);
        if modules.contains(&name) {
            found = Some(name.clone());
        } else {
            break;
        }
    }
    Some(found.unwrap_or_else(|| "main".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: &[(&str, Layer)] = &[
        ("arch", Layer::Base),
        ("arch::smp", Layer::Base),
        ("arch::stubs", Layer::Entry),
        ("log", Layer::Base),
        ("domain", Layer::State),
        ("sched", Layer::Subsystems),
        ("events", Layer::Subsystems),
        ("hypercall", Layer::Dispatch),
        ("main", Layer::Entry),
    ];

    fn tree(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut files: Vec<(String, String)> = [
            ("arch/mod.rs", "pub mod smp; pub mod stubs;"),
            ("arch/smp.rs", "use super::stubs as _s;\n"),
            (
                "arch/stubs.rs",
                "fn f() { crate::hypercall::on_syscall(); }",
            ),
            ("log.rs", "use crate::arch::smp;"),
            ("domain.rs", "use crate::arch::{self, smp::cpu};"),
            ("sched.rs", "use crate::{domain::Hv, events};"),
            (
                "events.rs",
                "fn f() { crate::sched::wake(); crate::info!(\"x\"); }",
            ),
            ("hypercall.rs", "use crate::events;"),
            ("main.rs", "mod arch;"),
        ]
        .iter()
        .map(|(f, t)| (f.to_string(), t.to_string()))
        .collect();
        for (f, t) in extra {
            match files.iter_mut().find(|(g, _)| g == f) {
                Some(e) => e.1.push_str(t),
                None => files.push((f.to_string(), t.to_string())),
            }
        }
        files
    }

    #[test]
    fn down_and_peer_edges_pass() {
        // arch::smp -> arch::stubs is the one edge up in `tree`.
        let ex = [("arch::smp", "arch::stubs", "test")];
        let r = check_sources(&tree(&[]), L, &ex);
        assert!(r.is_ok(), "{r:?}");
        // Without its exception it fails, naming the file, line and edge.
        let e = check_sources(&tree(&[]), L, &[]).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                "microvisor/src/arch/smp.rs:1: `arch::smp` (base) uses `arch::stubs` (entry)"
            ),
            "{e:?}"
        );
    }

    #[test]
    fn an_edge_up_fails_wherever_it_is_written() {
        let ex = [("arch::smp", "arch::stubs", "test")];
        for text in [
            "\nfn g() { crate::sched::idle_loop() }",
            "\nuse crate::{log, sched::TICK_NS};",
            "\nuse crate::{log, {sched}};",
            "\nuse crate::sched as s;",
        ] {
            let e = check_sources(&tree(&[("log.rs", text)]), L, &ex)
                .expect_err(text)
                .join("\n");
            assert!(
                e.contains("microvisor/src/log.rs:2: `log` (base) uses `sched` (subsystems)"),
                "{text}: {e}"
            );
        }
        // State -> dispatch, subsystems -> dispatch, base -> state.
        for (f, t, what) in [
            (
                "domain.rs",
                "\nuse crate::hypercall::Flow;",
                "`domain` (state) uses `hypercall` (dispatch)",
            ),
            (
                "events.rs",
                "\nuse crate::hypercall;",
                "`events` (subsystems) uses `hypercall` (dispatch)",
            ),
            (
                "arch/smp.rs",
                "\nfn f() { super::super::domain::lock() }",
                "`arch::smp` (base) uses `domain` (state)",
            ),
            (
                "arch/smp.rs",
                "\nfn f(h: &crate::domain::Hv) {}",
                "`arch::smp` (base) uses `domain` (state)",
            ),
        ] {
            let e = check_sources(&tree(&[(f, t)]), L, &ex)
                .expect_err(t)
                .join("\n");
            assert!(e.contains(what), "{t}: {e}");
        }
    }

    #[test]
    fn comments_and_strings_are_not_edges() {
        let ex = [("arch::smp", "arch::stubs", "test")];
        let text = "\n// crate::sched::wake\n/* crate::sched /* nested */ crate::sched */\n\
                    /// [`crate::sched`]\nconst S: &str = \"crate::sched\";\n\
                    const R: &str = r#\"crate::sched \"# ;\nconst C: char = '\"';\n\
                    fn f<'a>(x: &'a u8) {}\n";
        let r = check_sources(&tree(&[("log.rs", text)]), L, &ex);
        assert!(r.is_ok(), "{r:?}");
        // ... but code after them still is, on the right line.
        let e = check_sources(
            &tree(&[(
                "log.rs",
                &format!("{text}fn g() {{ crate::sched::wake() }}"),
            )]),
            L,
            &ex,
        )
        .unwrap_err();
        assert!(e[0].contains("log.rs:9:"), "{e:?}");
    }

    #[test]
    fn a_stale_exception_and_a_module_without_layer_fail() {
        let ex = [
            ("arch::smp", "arch::stubs", "test"),
            ("log", "sched", "gone"),
        ];
        let e = check_sources(&tree(&[]), L, &ex).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("`log` -> `sched`, which no longer occurs"),
            "{e:?}"
        );
        let ex = [("arch::smp", "arch::stubs", "test")];
        let e = check_sources(&tree(&[("irq.rs", "")]), L, &ex).unwrap_err();
        assert!(e[0].contains("module `irq` has no layer"), "{e:?}");
    }

    #[test]
    fn paths_name_the_module_file() {
        let modules: BTreeSet<String> = ["arch", "arch::smp", "mm", "mm::frames", "log", "domain"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
        assert_eq!(
            resolve(&p("mm::frames::with"), &modules).as_deref(),
            Some("mm::frames")
        );
        assert_eq!(resolve(&p("mm::PAGE"), &modules).as_deref(), Some("mm"));
        assert_eq!(resolve(&p("arch::self"), &modules).as_deref(), Some("arch"));
        assert_eq!(resolve(&p("warn"), &modules).as_deref(), Some("log"));
        assert_eq!(
            resolve(&p("kernel_main"), &modules).as_deref(),
            Some("main")
        );
        assert_eq!(
            resolve(&p("arch::super::domain::lock"), &modules).as_deref(),
            Some("domain")
        );
    }

    #[test]
    fn module_of_names() {
        assert_eq!(module_of("arch/mod.rs"), "arch");
        assert_eq!(module_of("arch/smp.rs"), "arch::smp");
        assert_eq!(module_of("main.rs"), "main");
    }
}
