//! Packer's `aws_secretsmanager(name, key)`: a Secrets Manager secret's value (or one field of a
//! JSON secret) while the template is evaluated. Functions read no AWS here: a call records what
//! it needs, the loader turns the calls into `amazon-secretsmanager` data requests
//! (`crate::template::data::DataRequest`, fetched by `crate::data_sources` as for a data block,
//! within the team's scope) and the second load reads the fetched values. Offline (`kiln
//! validate`) the value is a placeholder, as a data source's is.

use super::s;
use crate::template::data::DataValues;
use hcl::Value;
use hcl::eval::{Context, FuncDef, ParamType};
use std::cell::RefCell;

/// How many distinct secrets one template may read through the function.
pub const MAX_CALLS: usize = 64;

thread_local! {
    static FETCHED: RefCell<Option<DataValues>> = const { RefCell::new(None) };
    static CALLS: RefCell<Vec<(String, Option<String>)>> = const { RefCell::new(Vec::new()) };
}

/// Starts a load: `fetched` are the values `crate::data_sources` fetched (`None`: offline,
/// placeholders), and no call is recorded yet.
pub fn begin(fetched: Option<&DataValues>) {
    FETCHED.with(|f| *f.borrow_mut() = fetched.cloned());
    CALLS.with(|c| c.borrow_mut().clear());
}

/// The (secret, key) pairs the load's calls named, in first-call order.
pub fn calls() -> Vec<(String, Option<String>)> {
    CALLS.with(|c| c.borrow().clone())
}

/// The name of the data request a call becomes (its address is `data.amazon-secretsmanager.NAME`).
pub fn request_name(secret: &str, key: Option<&str>) -> String {
    match key {
        Some(k) => format!("aws_secretsmanager({secret:?}, {k:?})"),
        None => format!("aws_secretsmanager({secret:?})"),
    }
}

fn call(secret: String, key: Option<String>) -> Result<Value, String> {
    if secret.is_empty() {
        return Err("aws_secretsmanager: the secret's name is empty".into());
    }
    CALLS.with(|c| {
        let mut c = c.borrow_mut();
        if !c.iter().any(|(n, k)| *n == secret && *k == key) {
            if c.len() >= MAX_CALLS {
                return Err(format!(
                    "aws_secretsmanager: more than {MAX_CALLS} secrets in one template"
                ));
            }
            c.push((secret.clone(), key.clone()));
        }
        Ok(())
    })?;
    let address = format!(
        "data.{}.{}",
        crate::template::data::SECRETS_MANAGER,
        request_name(&secret, key.as_deref())
    );
    FETCHED.with(|f| match &*f.borrow() {
        None => Ok(Value::from(format!(
            "<aws_secretsmanager.{secret}{}>",
            key.as_deref().map(|k| format!(".{k}")).unwrap_or_default()
        ))),
        Some(d) => {
            if let Some(e) = d.errors.get(&address) {
                return Err(format!("aws_secretsmanager(\"{secret}\"): {e}"));
            }
            d.outputs
                .get(&address)
                .and_then(|o| o.get("value"))
                .map(|v| Value::from(v.clone()))
                .ok_or_else(|| {
                    format!("aws_secretsmanager(\"{secret}\"): the secret was not fetched")
                })
        }
    })
}

/// Declares `aws_secretsmanager` on `ctx`.
pub(super) fn declare(ctx: &mut Context<'_>) {
    ctx.declare_func(
        "aws_secretsmanager",
        FuncDef::builder()
            .param(ParamType::String)
            .param(ParamType::Any)
            .build(|a| {
                let key = match &a[1] {
                    Value::Null => None,
                    v => Some(s(v)).filter(|k| !k.is_empty()),
                };
                call(s(&a[0]), key)
            }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::functions::eval;

    #[test]
    fn calls_are_recorded_and_answered_from_what_was_fetched() {
        begin(None);
        assert_eq!(
            eval(r#"aws_secretsmanager("app/db", "password")"#),
            Ok(Value::from("<aws_secretsmanager.app/db.password>"))
        );
        let _ = eval(r#"aws_secretsmanager("app/db", "password")"#);
        let _ = eval(r#"aws_secretsmanager("plain", null)"#);
        assert_eq!(
            calls(),
            [
                ("app/db".to_owned(), Some("password".to_owned())),
                ("plain".to_owned(), None)
            ]
        );
        let mut d = DataValues::default();
        let addr =
            |n: &str, k: Option<&str>| format!("data.amazon-secretsmanager.{}", request_name(n, k));
        d.outputs.insert(
            addr("app/db", Some("password")),
            [("value".to_owned(), "hunter2".to_owned())]
                .into_iter()
                .collect(),
        );
        d.errors.insert(
            addr("gone", None),
            "Secrets Manager Secret \"gone\" Version \"AWSCURRENT\" not found".into(),
        );
        begin(Some(&d));
        assert_eq!(
            eval(r#"aws_secretsmanager("app/db", "password")"#),
            Ok(Value::from("hunter2"))
        );
        let e = eval(r#"aws_secretsmanager("gone", null)"#).expect_err("not found");
        assert!(e.contains("not found"), "{e}");
        assert!(eval(r#"aws_secretsmanager("", null)"#).is_err());
        begin(None);
    }
}
