//! HCL2 data sources. `amazon-ami` becomes a source filter the pipeline resolves at build time
//! (as `source_ami_filter`). `amazon-parameterstore` and `amazon-secretsmanager` are values a
//! template uses while it is loaded: this module reads their blocks into [`DataRequest`]s and
//! gives `data.KIND.NAME.FIELD` either the values fetched for them ([`Inputs::data`], filled by
//! `crate::data_sources` in a second load) or, when nothing was fetched (`kiln validate`,
//! `kiln inspect`: offline, like `packer validate`), placeholders.

use super::config::{AmiFilter, decode_filter_node};
use super::decode::Fields;
use super::gotmpl::Ctx;
use super::node::{Loc, Node};
use super::{Diagnostic, Inputs};
use std::collections::BTreeMap;

/// The AMI data source, resolved by the pipeline.
pub const AMAZON_AMI: &str = "amazon-ami";
/// The SSM Parameter Store data source.
pub const PARAMETER_STORE: &str = "amazon-parameterstore";
/// The Secrets Manager data source.
pub const SECRETS_MANAGER: &str = "amazon-secretsmanager";
/// The data sources kiln knows.
pub const KINDS: &[&str] = &[AMAZON_AMI, PARAMETER_STORE, SECRETS_MANAGER];

/// What `data.amazon-ami.NAME.id` evaluates to until the pipeline resolves the data source.
pub(super) const AMI_PREFIX: &str = "kiln-data:amazon-ami.";

/// Secrets Manager's default version stage (Packer's default too).
pub const DEFAULT_VERSION_STAGE: &str = "AWSCURRENT";

/// Access settings a data source block may carry. kiln calls AWS with the builder's own
/// credentials (the worker's role, or `kiln build`'s environment), so these are accepted and
/// ignored with a warning; `region` is honoured.
const ACCESS_FIELDS: &[&str] = &[
    "access_key",
    "secret_key",
    "token",
    "profile",
    "shared_credentials_file",
    "assume_role",
    "custom_endpoint_ec2",
    "decode_authorization_messages",
    "insecure_skip_tls_verify",
    "max_retries",
    "mfa_code",
    "skip_credential_validation",
    "skip_metadata_api_check",
    "skip_region_validation",
    "vault_aws_engine",
    "aws_polling",
];

/// What one data source block asks AWS for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataQuery {
    /// `ssm:GetParameter`.
    Parameter {
        /// The parameter's name or ARN.
        name: String,
        /// Decrypt a `SecureString`.
        with_decryption: bool,
    },
    /// `secretsmanager:GetSecretValue`.
    Secret {
        /// The secret's name or ARN.
        name: String,
        /// The JSON key whose value `value` holds.
        key: Option<String>,
        /// A version id (overrides `version_stage`).
        version_id: Option<String>,
        /// A version stage (`AWSCURRENT` by default).
        version_stage: String,
    },
}

/// A data source block whose values are fetched before the template is loaded for a build.
#[derive(Debug, Clone)]
pub struct DataRequest {
    /// `amazon-parameterstore` or `amazon-secretsmanager`.
    pub kind: String,
    /// The block's name (its second label).
    pub name: String,
    /// What to fetch.
    pub query: DataQuery,
    /// The block's `region`, when set (otherwise the builder's).
    pub region: Option<String>,
    /// Where the block is.
    pub loc: Loc,
}

impl DataRequest {
    /// `data.KIND.NAME`, as templates and messages name it.
    pub fn address(&self) -> String {
        format!("data.{}.{}", self.kind, self.name)
    }

    /// The output fields of this kind of data source, as Packer documents them.
    pub fn output_fields(&self) -> &'static [&'static str] {
        match self.query {
            DataQuery::Parameter { .. } => &["value", "version", "arn"],
            DataQuery::Secret { .. } => &["value", "secret_string", "secret_binary", "version_id"],
        }
    }
}

/// Values fetched for a template's data sources ([`Inputs::data`]).
#[derive(Debug, Clone, Default)]
pub struct DataValues {
    /// Output fields by address (`data.KIND.NAME`).
    pub outputs: BTreeMap<String, BTreeMap<String, String>>,
    /// Why a data source could not be fetched, by address: reported at its block.
    pub errors: BTreeMap<String, String>,
    /// What a template author should know about a fetched value, by address (a warning).
    pub warnings: BTreeMap<String, String>,
    /// Secret values (secrets, their JSON fields, `SecureString` parameters) to mask.
    pub secrets: Vec<String>,
}

/// The data sources of one template, as the loader declares them.
#[derive(Debug, Default)]
pub(super) struct DataSources {
    /// `amazon-ami` filters by block name.
    pub filters: BTreeMap<String, AmiFilter>,
    /// Blocks whose values are fetched.
    pub requests: Vec<DataRequest>,
    objects: BTreeMap<String, hcl::Map<String, hcl::Value>>,
}

impl DataSources {
    /// Declares block `data "KIND" "NAME"` whose attributes evaluated to `node`.
    pub fn declare(
        &mut self,
        kind: &str,
        name: &str,
        node: &Node,
        inputs: &Inputs,
        ctx: &Ctx,
        diags: &mut Vec<Diagnostic>,
    ) {
        let path = format!("data.{kind}.{name}");
        let outputs: Vec<(String, String)> = if kind == AMAZON_AMI {
            let filter = decode_filter_node(node, path, diags, ctx);
            self.filters.insert(name.to_owned(), filter);
            let sentinel = format!("{AMI_PREFIX}{name}");
            vec![("id".into(), sentinel.clone()), ("name".into(), sentinel)]
        } else if kind == PARAMETER_STORE || kind == SECRETS_MANAGER {
            let Some(request) = decode_request(kind, name, node, ctx, diags) else {
                return;
            };
            let outputs = outputs_of(&request, inputs, diags);
            self.requests.push(request);
            outputs
        } else {
            diags.push(Diagnostic::error(
                &node.loc,
                &path,
                format!(
                    "data source `{kind}` is not supported: kiln resolves {}",
                    KINDS
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
            return;
        };
        self.objects.entry(kind.to_owned()).or_default().insert(
            name.to_owned(),
            hcl::Value::Object(
                outputs
                    .into_iter()
                    .map(|(k, v)| (k, hcl::Value::from(v)))
                    .collect(),
            ),
        );
    }

    /// The `data` object expressions see.
    pub fn value(&self) -> hcl::Value {
        let mut data = hcl::Map::new();
        for kind in KINDS {
            data.insert(
                (*kind).to_owned(),
                hcl::Value::Object(self.objects.get(*kind).cloned().unwrap_or_default()),
            );
        }
        hcl::Value::Object(data)
    }

    /// Whether the values of fetched data sources are placeholders (nothing was fetched).
    pub fn placeholders(&self, inputs: &Inputs) -> bool {
        inputs.data.is_none() && !self.requests.is_empty()
    }
}

/// The placeholder `data.KIND.NAME.FIELD` has while nothing was fetched.
pub fn placeholder(address: &str, field: &str) -> String {
    format!("<{address}.{field}>")
}

/// Whether `text` (an expression) refers to a data source whose values are fetched.
pub(super) fn mentions_fetched(text: &str) -> bool {
    [PARAMETER_STORE, SECRETS_MANAGER]
        .iter()
        .any(|k| text.contains(&format!("data.{k}.")))
}

fn decode_request(
    kind: &str,
    name: &str,
    node: &Node,
    ctx: &Ctx,
    diags: &mut Vec<Diagnostic>,
) -> Option<DataRequest> {
    let mut f = Fields::new(node, format!("data.{kind}.{name}"), diags, ctx);
    let id = f.string("name", &[]).unwrap_or_default();
    if id.is_empty() {
        f.error("name", "a 'name' must be provided");
    }
    let query = if kind == PARAMETER_STORE {
        DataQuery::Parameter {
            name: id.clone(),
            with_decryption: f.bool("with_decryption").unwrap_or(false),
        }
    } else {
        DataQuery::Secret {
            name: id.clone(),
            key: f.string("key", &[]).filter(|k| !k.is_empty()),
            version_id: f.string("version_id", &[]).filter(|k| !k.is_empty()),
            version_stage: f
                .string("version_stage", &[])
                .filter(|k| !k.is_empty())
                .unwrap_or_else(|| DEFAULT_VERSION_STAGE.to_owned()),
        }
    };
    let region = f.string("region", &[]).filter(|r| !r.is_empty());
    for k in ACCESS_FIELDS {
        if f.raw(k).is_some() {
            f.warn(
                k,
                format!("`{k}` is ignored: kiln reads data sources with the builder's own credentials (the worker's role, or the environment of `kiln build`)"),
            );
        }
    }
    f.finish(&[]);
    (!id.is_empty()).then(|| DataRequest {
        kind: kind.to_owned(),
        name: name.to_owned(),
        query,
        region,
        loc: node.loc.clone(),
    })
}

fn outputs_of(
    request: &DataRequest,
    inputs: &Inputs,
    diags: &mut Vec<Diagnostic>,
) -> Vec<(String, String)> {
    let address = request.address();
    let fetched = inputs.data.as_ref().map(|d| {
        if let Some(error) = d.errors.get(&address) {
            diags.push(Diagnostic::error(&request.loc, &address, error.clone()));
        }
        if let Some(warning) = d.warnings.get(&address) {
            diags.push(Diagnostic::warning(&request.loc, &address, warning.clone()));
        }
        d.outputs.get(&address).cloned().unwrap_or_default()
    });
    request
        .output_fields()
        .iter()
        .map(|field| {
            let value = match &fetched {
                Some(outputs) => outputs.get(*field).cloned().unwrap_or_default(),
                None => placeholder(&address, field),
            };
            ((*field).to_owned(), value)
        })
        .collect()
}

/// A Secrets Manager secret's `value` output. A JSON object secret gives the value of `key`; with
/// no `key`, the value of its only field. Plain-text secrets are their own value.
///
/// Deliberately stricter than Packer, which answers "" for a key the secret lacks and, for a
/// secret of several fields and no `key`, the value of a field picked at random (Go's map order):
/// both are errors here, naming the secret's fields.
pub fn secret_value(secret: &str, key: Option<&str>) -> Result<String, String> {
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_str::<serde_json::Value>(secret)
    else {
        return match key {
            Some(k) => Err(format!(
                "`key` is \"{k}\" but the secret is not a JSON object: remove `key` to use the whole secret"
            )),
            None => Ok(secret.to_owned()),
        };
    };
    let names = || {
        fields
            .keys()
            .map(|k| format!("\"{k}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let field = match key {
        Some(k) => fields.get(k).ok_or_else(|| {
            format!(
                "the secret has no key \"{k}\"; its keys are {}: set `key` to one of them",
                names()
            )
        })?,
        None if fields.len() == 1 => fields.values().next().unwrap_or(&serde_json::Value::Null),
        None => {
            return Err(format!(
                "the secret has {} keys ({}): set `key` to the one `value` should hold (or use `secret_string` with jsondecode())",
                fields.len(),
                names()
            ));
        }
    };
    match field {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!(
            "the secret's value is not a string, number or bool but {other}: read it from `secret_string` with jsondecode()"
        )),
    }
}

/// The shortest field of a JSON secret that is masked on its own. A secret's fields include user
/// names, ports and flags ("u", "1", "true"); masking every occurrence of those would make logs
/// unreadable, and they are not what a secret protects. The whole secret is always masked.
pub const MIN_MASKED_FIELD: usize = 4;

/// Every string a secret holds that must never be printed: the whole secret and, for a JSON
/// object, each string field of at least [`MIN_MASKED_FIELD`] characters.
pub fn secret_parts(secret: &str) -> Vec<String> {
    let mut out = vec![secret.to_owned()];
    if let Ok(serde_json::Value::Object(fields)) = serde_json::from_str::<serde_json::Value>(secret)
    {
        for v in fields.values() {
            if let serde_json::Value::String(s) = v
                && s.chars().count() >= MIN_MASKED_FIELD
            {
                out.push(s.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_value_follows_packer_where_it_is_deterministic() {
        assert_eq!(secret_value("plain", None).unwrap(), "plain");
        assert_eq!(secret_value(r#"{"k":"v"}"#, None).unwrap(), "v");
        assert_eq!(
            secret_value(r#"{"a":"1","k":"v"}"#, Some("k")).unwrap(),
            "v"
        );
        assert_eq!(
            secret_value(r#"{"port":5432}"#, Some("port")).unwrap(),
            "5432"
        );
        assert_eq!(secret_value(r#"{"r":1.5}"#, None).unwrap(), "1.5");
    }

    #[test]
    fn secret_value_refuses_what_packer_guesses() {
        let e = secret_value(r#"{"a":"1","b":"2"}"#, None).unwrap_err();
        assert!(e.contains("\"a\", \"b\"") && e.contains("set `key`"), "{e}");
        let e = secret_value(r#"{"a":"1"}"#, Some("b")).unwrap_err();
        assert!(e.contains("no key \"b\"") && e.contains("\"a\""), "{e}");
        assert!(secret_value("plain", Some("k")).is_err());
        assert!(secret_value(r#"{"o":{"x":1}}"#, Some("o")).is_err());
    }

    #[test]
    fn secret_parts_cover_each_field() {
        let parts = secret_parts(r#"{"user":"u","password":"p4ss","port":1}"#);
        assert!(parts.contains(&"p4ss".to_owned()));
        assert!(!parts.contains(&"u".to_owned()) && !parts.contains(&"1".to_owned()));
    }
}
