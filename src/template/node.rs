//! A format-neutral tree of template values that remembers where each value came from, so that
//! every diagnostic can name the file and line. JSON templates and evaluated HCL2 bodies both
//! become `Node`s before the builder configuration is decoded from them.

use std::fmt;
use std::sync::Arc;

/// Where a value was written: file and 1-based line (0 when the format has no lines).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Loc {
    /// The template file (as given on the command line or found in the directory).
    pub file: Arc<str>,
    /// 1-based line, or 0 when unknown.
    pub line: u32,
}

impl Loc {
    /// A location in `file` at `line`.
    pub fn new(file: &Arc<str>, line: u32) -> Self {
        Self {
            file: Arc::clone(file),
            line,
        }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}", self.file, self.line)
        } else {
            write!(f, "{}", self.file)
        }
    }
}

/// A value with its location.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Where it was written.
    pub loc: Loc,
}

/// A template value: JSON's data model (objects keep their key order).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number, kept as written where possible.
    Number(f64),
    /// A string.
    String(String),
    /// A list.
    Array(Vec<Node>),
    /// An object; a key appears once (the last one written wins).
    Object(Vec<(String, Node)>),
}

impl Node {
    /// A node holding `value` at `loc`.
    pub fn new(value: Value, loc: Loc) -> Self {
        Self { value, loc }
    }

    /// The object's entries, or `None` when this is not an object.
    pub fn as_object(&self) -> Option<&[(String, Node)]> {
        match &self.value {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The value of `key` when this is an object that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_object()?
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// The string, when this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// A short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        self.value.type_name()
    }

    /// Converts to `serde_json::Value` (locations dropped).
    pub fn to_json(&self) -> serde_json::Value {
        match &self.value {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Number(n) => number_json(*n),
            Value::String(s) => serde_json::Value::String(s.clone()),
            Value::Array(a) => serde_json::Value::Array(a.iter().map(Node::to_json).collect()),
            Value::Object(o) => {
                serde_json::Value::Object(o.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }
}

/// A JSON number for `n`: an integer when it is one.
pub fn number_json(n: f64) -> serde_json::Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        serde_json::Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null)
    }
}

impl Value {
    /// A short name of the type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "list",
            Value::Object(_) => "object",
        }
    }
}

/// Formats a number as Packer prints it: integers without a fraction.
pub fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}
