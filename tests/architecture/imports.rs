//! The file-level import graph of `src/`, read from the source text.
//!
//! A file imports another when it names something the other defines: in a `use` line
//! (`use crate::a::B`, `use super::{c, D}`), or as a path in code (`crate::a::B`,
//! `child::f()`, `alias::g()` after `use crate::x as alias`). A name is followed through
//! re-exports (`pub use`, and private `use`, which a module's children also see) to the
//! file that defines it. A re-export itself is not an import: like a `mod` line it is the
//! module's face, so a child that uses its parent's error type while the parent
//! re-exports the child's items is not a circle; a parent whose own code calls the child
//! is an import, and then the child must not need the parent. A re-export of another
//! top-level module's item (`pub use crate::crypto::X` in `vault.rs`) is an import.
//! `#[cfg(test)]` items and comments are left out: test code does not shape the house.
//!
//! This is text, not a compiler: it knows `mod`, `use`, paths and the item keywords, and
//! nothing of macros that generate items or of inline `mod x { ... }` blocks (those count
//! as their file). That is enough for the question it answers: which file needs which.

use std::collections::{BTreeMap, BTreeSet};

/// One token of the source: an identifier, `::`, or one punctuation character.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
}

/// Removes comments, string and char literals (their contents could look like paths).
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if c == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) && !prev_is_ident(b, i) {
            // Raw string r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c as char);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == b'"' && (0..hashes).all(|h| b.get(j + 1 + h) == Some(&b'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == b'\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a): skip only the former.
            let close = if b.get(i + 1) == Some(&b'\\') {
                (i + 2..b.len().min(i + 12)).find(|&j| b[j] == b'\'')
            } else if b.get(i + 2) == Some(&b'\'') {
                Some(i + 2)
            } else {
                let ch_len = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                (b.get(i + 1 + ch_len) == Some(&b'\'')).then_some(i + 1 + ch_len)
            };
            match close {
                Some(j) => {
                    out.push_str("' '");
                    i = j + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let ch = text[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn prev_is_ident(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

fn tokens(text: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphabetic() || c == '_' {
            let mut s = String::from(c);
            while let Some(&n) = chars.peek() {
                if n.is_alphanumeric() || n == '_' {
                    s.push(n);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Tok::Ident(s));
        } else if c.is_ascii_digit() {
            while chars.peek().is_some_and(|n| n.is_alphanumeric() || *n == '_' || *n == '.') {
                chars.next();
            }
        } else if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            out.push(Tok::PathSep);
        } else if !c.is_whitespace() {
            out.push(Tok::Punct(c));
        }
    }
    out
}

/// Drops every item behind `#[cfg(test)]` (a `mod tests { ... }`, a `mod fuzz;`, a fn).
fn without_test_items(toks: Vec<Tok>) -> Vec<Tok> {
    let mut out = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        let is_cfg_test = toks[i] == Tok::Punct('#')
            && toks.get(i + 1) == Some(&Tok::Punct('['))
            && toks.get(i + 2) == Some(&Tok::Ident("cfg".into()))
            && toks.get(i + 3) == Some(&Tok::Punct('('))
            && toks.get(i + 4) == Some(&Tok::Ident("test".into()))
            && toks.get(i + 5) == Some(&Tok::Punct(')'))
            && toks.get(i + 6) == Some(&Tok::Punct(']'));
        if !is_cfg_test {
            out.push(toks[i].clone());
            i += 1;
            continue;
        }
        // Skip to the end of the item: a `;` before any brace, or the matching `}`.
        i += 7;
        let mut depth = 0usize;
        while i < toks.len() {
            match &toks[i] {
                Tok::Punct('{') => depth += 1,
                Tok::Punct('}') => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        i += 1;
                        break;
                    }
                }
                Tok::Punct(';') if depth == 0 => {
                    i += 1;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
    }
    out
}

/// One `use` leaf: the full path written, and the name it is bound to here.
#[derive(Clone, Debug)]
struct UseLeaf {
    path: Vec<String>,
    /// `None` for a glob (`*`).
    bound: Option<String>,
    /// `pub use` (any visibility): a re-export, part of the module's face like its `mod`
    /// lines, so not an import of the file itself; followed when resolving names.
    reexport: bool,
}

/// Parses the use tree starting at `toks[*i]` under `prefix`, up to `;`, `,` or `}`.
fn use_tree(toks: &[Tok], i: &mut usize, prefix: Vec<String>, out: &mut Vec<UseLeaf>) {
    let mut path = prefix;
    loop {
        match toks.get(*i) {
            Some(Tok::Ident(s)) => {
                path.push(s.clone());
                *i += 1;
            }
            Some(Tok::PathSep) => *i += 1,
            Some(Tok::Punct('*')) => {
                *i += 1;
                out.push(UseLeaf { path, bound: None, reexport: false });
                return;
            }
            Some(Tok::Punct('{')) => {
                *i += 1;
                loop {
                    match toks.get(*i) {
                        Some(Tok::Punct('}')) => {
                            *i += 1;
                            return;
                        }
                        Some(Tok::Punct(',')) => *i += 1,
                        None => return,
                        _ => use_tree(toks, i, path.clone(), out),
                    }
                }
            }
            _ => {
                // End of this leaf (`;`, `,`, `}`), with `as NAME` already folded in below.
                if path.len() >= 2 && path[path.len() - 2] == "as" {
                    let bound = path.pop();
                    path.pop();
                    out.push(UseLeaf { path, bound, reexport: false });
                } else if let Some(last) = path.last().cloned() {
                    let bound = if last == "self" {
                        path.pop();
                        path.last().cloned()
                    } else {
                        Some(last)
                    };
                    out.push(UseLeaf { path, bound, reexport: false });
                }
                return;
            }
        }
    }
}

/// What one file says about itself and what it names.
#[derive(Default, Debug)]
struct FileFacts {
    /// Items defined here (struct, enum, fn, trait, type, const, static, mod, macro_rules).
    defines: BTreeSet<String>,
    /// Child modules declared with `mod x;` or `mod x { }`.
    mods: BTreeSet<String>,
    uses: Vec<UseLeaf>,
    /// Paths written in code (not in `use`): at least two segments.
    paths: Vec<Vec<String>>,
}

const ITEM_KEYWORDS: [&str; 9] = ["struct", "enum", "fn", "trait", "type", "const", "static", "union", "mod"];

fn facts(text: &str) -> FileFacts {
    let toks = without_test_items(tokens(&strip(text)));
    let mut f = FileFacts::default();
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Ident(k) if k == "use" => {
                let public = i >= 1
                    && (toks[i - 1] == Tok::Ident("pub".into())
                        || (toks[i - 1] == Tok::Punct(')') && i >= 4 && toks[i - 4] == Tok::Ident("pub".into())));
                i += 1;
                let mut leaves = Vec::new();
                use_tree(&toks, &mut i, Vec::new(), &mut leaves);
                leaves.iter_mut().for_each(|l| l.reexport = public);
                f.uses.extend(leaves);
                continue;
            }
            Tok::Ident(k) if ITEM_KEYWORDS.contains(&k.as_str()) => {
                if let Some(Tok::Ident(name)) = toks.get(i + 1)
                    && !ITEM_KEYWORDS.contains(&name.as_str())
                    && name != "self"
                {
                    f.defines.insert(name.clone());
                    if k == "mod" {
                        f.mods.insert(name.clone());
                    }
                }
            }
            Tok::Ident(k) if k == "macro_rules" => {
                if let (Some(Tok::Punct('!')), Some(Tok::Ident(name))) = (toks.get(i + 1), toks.get(i + 2)) {
                    f.defines.insert(name.clone());
                }
            }
            Tok::Ident(first)
                if toks.get(i + 1) == Some(&Tok::PathSep)
                    && !matches!(i.checked_sub(1).map(|p| &toks[p]), Some(Tok::PathSep)) =>
            {
                let mut path = vec![first.clone()];
                let mut j = i + 1;
                while toks.get(j) == Some(&Tok::PathSep) {
                    match toks.get(j + 1) {
                        Some(Tok::Ident(s)) => path.push(s.clone()),
                        _ => break,
                    }
                    j += 2;
                }
                if path.len() >= 2 {
                    f.paths.push(path);
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    f
}

/// The import graph: file → (file it imports → names taken).
pub struct Graph {
    pub edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

struct Crate {
    /// Module path (`a::b`) → file.
    files: BTreeMap<Vec<String>, String>,
    /// File → module path.
    modules: BTreeMap<String, Vec<String>>,
    facts: BTreeMap<String, FileFacts>,
}

/// The module path of a file under `src/` (`lib.rs` is the root); `None` for binaries.
fn module_path(rel: &str) -> Option<Vec<String>> {
    let rel = rel.strip_suffix(".rs")?;
    if rel == "main" || rel.starts_with("bin/") {
        return None;
    }
    if rel == "lib" {
        return Some(Vec::new());
    }
    let mut segs: Vec<String> = rel.split('/').map(str::to_owned).collect();
    if segs.last().is_some_and(|s| s == "mod") {
        segs.pop();
    }
    Some(segs)
}

impl Crate {
    /// Where `path`, written in the module `here`, leads: the defining file and the name,
    /// or `Err(module)` when it names a module itself.
    fn resolve(&self, here: &[String], path: &[String], depth: usize) -> Option<Result<(String, String), Vec<String>>> {
        if depth > 8 || path.is_empty() {
            return None;
        }
        let here_file = self.files.get(here)?;
        let here_facts = &self.facts[here_file];
        let (mut module, rest): (Vec<String>, &[String]) = match path[0].as_str() {
            "crate" => (Vec::new(), &path[1..]),
            "self" => (here.to_vec(), &path[1..]),
            "super" => {
                let mut m = here.to_vec();
                let mut k = 0;
                while path.get(k).is_some_and(|s| s == "super") {
                    m.pop();
                    k += 1;
                }
                (m, &path[k..])
            }
            first => {
                // A child module, or a name bound by a `use` here.
                let mut child = here.to_vec();
                child.push(first.to_owned());
                if here_facts.mods.contains(first) && self.files.contains_key(&child) {
                    (child, &path[1..])
                } else if let Some(leaf) = here_facts.uses.iter().find(|u| u.bound.as_deref() == Some(first)) {
                    let mut full = leaf.path.clone();
                    full.extend_from_slice(&path[1..]);
                    // An outside crate (`use tonic::Status`) ends in `None` a step later.
                    return self.resolve(here, &full, depth + 1);
                } else {
                    return None; // an outside crate, std, or a local binding
                }
            }
        };
        let mut rest = rest;
        while let Some(seg) = rest.first() {
            let mut next = module.clone();
            next.push(seg.clone());
            if self.files.contains_key(&next) {
                module = next;
                rest = &rest[1..];
            } else {
                break;
            }
        }
        let file = self.files.get(&module)?;
        let Some(name) = rest.first() else {
            return Some(Err(module));
        };
        let f = &self.facts[file];
        if f.defines.contains(name) {
            return Some(Ok((file.clone(), name.clone())));
        }
        // Re-exported (or imported, which children see) under this name.
        if let Some(leaf) = f.uses.iter().find(|u| u.bound.as_deref() == Some(name.as_str()))
            && let Some(r) = self.resolve(&module, &leaf.path, depth + 1)
        {
            return Some(r);
        }
        for glob in f.uses.iter().filter(|u| u.bound.is_none()) {
            let mut p = glob.path.clone();
            p.push(name.clone());
            if let Some(Ok(found)) = self.resolve(&module, &p, depth + 1)
                && self.facts[&found.0].defines.contains(name)
            {
                return Some(Ok(found));
            }
        }
        Some(Ok((file.clone(), name.clone())))
    }
}

impl Graph {
    /// Builds the graph of the files given as (path relative to `src/`, text).
    pub fn build(files: &[(String, String)]) -> Graph {
        let mut krate = Crate { files: BTreeMap::new(), modules: BTreeMap::new(), facts: BTreeMap::new() };
        for (rel, text) in files {
            if let Some(m) = module_path(rel) {
                krate.files.insert(m.clone(), rel.clone());
                krate.modules.insert(rel.clone(), m);
                krate.facts.insert(rel.clone(), facts(text));
            }
        }
        let mut edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
        for (file, module) in &krate.modules {
            let f = &krate.facts[file];
            let mut add = |target: String, name: String| {
                if &target != file {
                    edges.entry(file.clone()).or_default().entry(target).or_default().insert(name);
                }
            };
            // A re-export of another top-level module's item is an import all the same (a
            // module's face may show only its own children without needing them).
            let top = |f: &str| f.split('/').next().unwrap_or(f).trim_end_matches(".rs").to_owned();
            for leaf in f.uses.iter().filter(|u| u.reexport) {
                if let Some(Ok((target, name))) = krate.resolve(module, &leaf.path, 0)
                    && top(&target) != top(file)
                {
                    add(target, name);
                }
            }
            for leaf in f.uses.iter().filter(|u| !u.reexport) {
                match krate.resolve(module, &leaf.path, 0) {
                    Some(Ok((target, name))) => add(target, name),
                    // A glob, or a module imported to be named through (`use crate::audit;`
                    // then `audit::X`): the paths below say which file it needs.
                    Some(Err(m)) if leaf.bound.is_none() => add(krate.files[&m].clone(), "*".into()),
                    _ => {}
                }
            }
            for path in &f.paths {
                if let Some(Ok((target, name))) = krate.resolve(module, path, 0) {
                    add(target, name);
                }
            }
        }
        Graph { edges }
    }

    /// Every circle: the strongly connected components of more than one file, each sorted.
    pub fn circles(&self) -> Vec<Vec<String>> {
        // Tarjan's algorithm, iterative enough for a few hundred files (recursion is fine).
        struct T<'a> {
            g: &'a Graph,
            index: BTreeMap<&'a str, usize>,
            low: BTreeMap<&'a str, usize>,
            stack: Vec<&'a str>,
            on: BTreeSet<&'a str>,
            next: usize,
            out: Vec<Vec<String>>,
        }
        fn visit<'a>(t: &mut T<'a>, v: &'a str) {
            t.index.insert(v, t.next);
            t.low.insert(v, t.next);
            t.next += 1;
            t.stack.push(v);
            t.on.insert(v);
            if let Some(targets) = t.g.edges.get(v) {
                for w in targets.keys() {
                    let w = w.as_str();
                    if !t.index.contains_key(w) {
                        visit(t, w);
                        let lw = t.low[w];
                        let lv = t.low[v];
                        t.low.insert(v, lv.min(lw));
                    } else if t.on.contains(w) {
                        let iw = t.index[w];
                        let lv = t.low[v];
                        t.low.insert(v, lv.min(iw));
                    }
                }
            }
            if t.low[v] == t.index[v] {
                let mut comp = Vec::new();
                while let Some(w) = t.stack.pop() {
                    t.on.remove(w);
                    comp.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort();
                    t.out.push(comp);
                }
            }
        }
        let mut t = T {
            g: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on: BTreeSet::new(),
            next: 0,
            out: Vec::new(),
        };
        for v in self.edges.keys() {
            if !t.index.contains_key(v.as_str()) {
                visit(&mut t, v);
            }
        }
        t.out.sort();
        t.out
    }

    /// A circle described for a person: each arrow inside it with the names it takes.
    pub fn describe(&self, circle: &[String]) -> String {
        let mut s = String::new();
        for from in circle {
            for (to, names) in self.edges.get(from).into_iter().flatten() {
                if circle.contains(to) {
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    s.push_str(&format!("  {from} -> {to}: {}\n", names.join(", ")));
                }
            }
        }
        s
    }

    /// Does `from` import `to` (directly)?
    pub fn imports(&self, from: &str, to: &str) -> Option<&BTreeSet<String>> {
        self.edges.get(from)?.get(to)
    }
}
