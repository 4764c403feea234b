//! Reads typed fields out of a `Node` object the way Packer's decoder does (weak typing: `"30"`
//! for a number, `"true"` for a bool, `"a,b"` for a list), interpolating Go templates in strings,
//! and reporting every problem with its file, line and field instead of stopping at the first.

use super::gotmpl::{self, Ctx};
use super::node::{Node, Value, format_number};
use super::{Diagnostic, suggest};
use std::collections::{BTreeMap, BTreeSet};

/// Reads the fields of one object; remembers which keys were read so the rest can be reported as
/// unknown.
pub struct Fields<'a> {
    node: &'a Node,
    /// Prefix for field names in messages, e.g. `source.amazon-chroot.app` or `provisioners[1]`.
    pub path: String,
    used: BTreeSet<String>,
    /// Where diagnostics go.
    pub diags: &'a mut Vec<Diagnostic>,
    /// The template engine's context (placeholders are replaced per field).
    pub ctx: &'a Ctx,
}

impl<'a> Fields<'a> {
    /// Starts reading `node`, which must be an object (reported otherwise).
    pub fn new(
        node: &'a Node,
        path: impl Into<String>,
        diags: &'a mut Vec<Diagnostic>,
        ctx: &'a Ctx,
    ) -> Self {
        let path = path.into();
        if node.as_object().is_none() {
            diags.push(Diagnostic::error(
                &node.loc,
                &path,
                format!("expected an object, got a {}", node.type_name()),
            ));
        }
        Self {
            node,
            path,
            used: BTreeSet::new(),
            diags,
            ctx,
        }
    }

    /// The field name with this object's path, for messages.
    pub fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Reports an error about `key` at its location (or the object's).
    pub fn error(&mut self, key: &str, message: impl Into<String>) {
        let loc = self
            .node
            .get(key)
            .map(|n| n.loc.clone())
            .unwrap_or_else(|| self.node.loc.clone());
        let field = self.field(key);
        self.diags.push(Diagnostic::error(&loc, &field, message));
    }

    /// Reports a warning about `key`.
    pub fn warn(&mut self, key: &str, message: impl Into<String>) {
        let loc = self
            .node
            .get(key)
            .map(|n| n.loc.clone())
            .unwrap_or_else(|| self.node.loc.clone());
        let field = self.field(key);
        self.diags.push(Diagnostic::warning(&loc, &field, message));
    }

    /// The raw node of `key`, marking it used. `null` counts as absent.
    pub fn raw(&mut self, key: &str) -> Option<&'a Node> {
        self.used.insert(key.to_owned());
        self.node.get(key).filter(|n| n.value != Value::Null)
    }

    /// Whether `key` is present (and not null).
    pub fn has(&self, key: &str) -> bool {
        self.node.get(key).is_some_and(|n| n.value != Value::Null)
    }

    fn interpolate(&mut self, key: &str, s: &str, placeholders: &[&str]) -> Option<String> {
        if !gotmpl::has_actions(s) {
            return Some(s.to_owned());
        }
        let mut ctx = self.ctx.clone();
        ctx.placeholders = placeholders
            .iter()
            .map(|p| ((*p).to_owned(), None))
            .collect();
        match gotmpl::render(s, &ctx) {
            Ok(r) => {
                for w in r.warnings {
                    self.warn(key, w);
                }
                Some(r.text)
            }
            Err(e) => {
                self.error(key, e);
                None
            }
        }
    }

    fn scalar_string(&mut self, key: &str, node: &Node, placeholders: &[&str]) -> Option<String> {
        match &node.value {
            Value::String(s) => self.interpolate(key, s, placeholders),
            Value::Number(n) => Some(format_number(*n)),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.error(
                    key,
                    format!("expected a string, got a {}", other.type_name()),
                );
                None
            }
        }
    }

    /// A string field, interpolated, with `placeholders` kept for build time.
    pub fn string(&mut self, key: &str, placeholders: &[&str]) -> Option<String> {
        let node = self.raw(key)?;
        self.scalar_string(key, node, placeholders)
    }

    /// A boolean: `true`, `"true"`, `"1"`, `"false"`, `"0"` (and templates rendering to those).
    pub fn bool(&mut self, key: &str) -> Option<bool> {
        let node = self.raw(key)?;
        match &node.value {
            Value::Bool(b) => Some(*b),
            Value::String(_) | Value::Number(_) => {
                let s = self.scalar_string(key, node, &[])?;
                match s.trim().to_ascii_lowercase().as_str() {
                    "true" | "1" | "t" => Some(true),
                    "false" | "0" | "f" | "" => Some(false),
                    _ => {
                        self.error(
                            key,
                            format!("expected a boolean (true or false), got \"{s}\""),
                        );
                        None
                    }
                }
            }
            other => {
                self.error(
                    key,
                    format!("expected a boolean, got a {}", other.type_name()),
                );
                None
            }
        }
    }

    /// An integer: `30` or `"30"` (and templates rendering to a number); `""` is unset.
    pub fn int(&mut self, key: &str) -> Option<i64> {
        let node = self.raw(key)?;
        match &node.value {
            Value::Number(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => Some(*n as i64),
            Value::Number(n) => {
                self.error(key, format!("expected a whole number, got {n}"));
                None
            }
            Value::String(_) => {
                let s = self.scalar_string(key, node, &[])?;
                match s.trim().parse::<i64>() {
                    Ok(v) => Some(v),
                    // Packer's weak decoder reads "" as the zero value, which means "unset"
                    // for every number of the builder ("{{user `size`}}" with no size).
                    Err(_) if s.trim().is_empty() => None,
                    Err(_) => {
                        self.error(key, format!("expected a whole number, got \"{s}\""));
                        None
                    }
                }
            }
            other => {
                self.error(
                    key,
                    format!("expected a number, got a {}", other.type_name()),
                );
                None
            }
        }
    }

    /// A list of strings; a single string is split on commas, as Packer's decoder does.
    pub fn string_list(&mut self, key: &str, placeholders: &[&str]) -> Option<Vec<String>> {
        let node = self.raw(key)?;
        match &node.value {
            Value::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let k = format!("{key}[{i}]");
                    if let Some(s) = self.scalar_string(&k, item, placeholders) {
                        out.push(s);
                    }
                }
                Some(out)
            }
            Value::String(_) | Value::Number(_) => {
                let s = self.scalar_string(key, node, placeholders)?;
                Some(
                    s.split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(str::to_owned)
                        .collect(),
                )
            }
            other => {
                self.error(
                    key,
                    format!("expected a list of strings, got a {}", other.type_name()),
                );
                None
            }
        }
    }

    /// A map of strings (tags); HCL `tag { key = .. value = .. }` blocks are merged by the caller.
    pub fn string_map(
        &mut self,
        key: &str,
        placeholders: &[&str],
    ) -> Option<BTreeMap<String, String>> {
        let node = self.raw(key)?;
        match &node.value {
            Value::Object(entries) => {
                let mut out = BTreeMap::new();
                for (k, v) in entries {
                    let field = format!("{key}.{k}");
                    if let Some(s) = self.scalar_string(&field, v, placeholders) {
                        out.insert(k.clone(), s);
                    }
                }
                Some(out)
            }
            other => {
                self.error(
                    key,
                    format!("expected a map of strings, got a {}", other.type_name()),
                );
                None
            }
        }
    }

    /// HCL's repeated `NAME { key = "k" value = "v" }` blocks, as a map.
    pub fn key_value_blocks(
        &mut self,
        key: &str,
        placeholders: &[&str],
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(node) = self.raw(key) else {
            return out;
        };
        let items: Vec<&Node> = match &node.value {
            Value::Array(a) => a.iter().collect(),
            Value::Object(_) => vec![node],
            _ => {
                self.error(key, "expected `key` and `value` blocks");
                return out;
            }
        };
        for item in items {
            let (k, v) = (item.get("key"), item.get("value"));
            match (k.and_then(Node::as_str), v) {
                (Some(k), Some(v)) => {
                    if let Some(s) = self.scalar_string(key, v, placeholders) {
                        out.insert(k.to_owned(), s);
                    }
                }
                _ => self.error(key, format!("each `{key}` block needs `key` and `value`")),
            }
        }
        out
    }

    /// Reports every key that was not read as unknown, suggesting the closest known name.
    /// Keys starting with `_` (Packer's `_comment` convention) are ignored.
    pub fn finish(self, hints: &[(&str, &str)]) {
        let Some(entries) = self.node.as_object() else {
            return;
        };
        let known: Vec<&str> = self.used.iter().map(String::as_str).collect();
        for (k, v) in entries {
            if k.starts_with('_') || self.used.contains(k) {
                continue;
            }
            let field = if self.path.is_empty() {
                k.clone()
            } else {
                format!("{}.{k}", self.path)
            };
            let message = if let Some((_, hint)) = hints.iter().find(|(name, _)| name == k) {
                format!("unknown field `{k}`: {hint}")
            } else if let Some(s) = suggest(k, known.iter().copied()) {
                format!("unknown field `{k}`: did you mean `{s}`?")
            } else {
                format!("unknown field `{k}`")
            };
            self.diags.push(Diagnostic::error(&v.loc, &field, message));
        }
    }
}
