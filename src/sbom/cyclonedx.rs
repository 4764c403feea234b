//! CycloneDX 1.5 JSON: the operating system as the metadata's component, one `library`
//! component per installed package and kernel.

use super::format::{DocMeta, entries, is_spdx_expression, required};
use super::spdx::kind_of;
use super::{Inventory, Package, SbomError, purl};
use serde_json::{Value, json};

/// The properties kiln adds (CycloneDX's property names are free; `kiln:` keeps them apart).
const ARCH: &str = "kiln:arch";
const SOURCE: &str = "kiln:source";

fn component(p: &Package, purl: String, n: usize) -> Value {
    let mut v = json!({
        "type": "library",
        "bom-ref": format!("pkg-{n}"),
        "name": p.name,
        "version": p.version,
        "purl": purl,
    });
    if let Some(license) = &p.license {
        v["licenses"] = if is_spdx_expression(license) {
            json!([{ "expression": license }])
        } else {
            json!([{ "license": { "name": license } }])
        };
    }
    let props: Vec<Value> = [(ARCH, &p.arch), (SOURCE, &p.source)]
        .into_iter()
        .filter_map(|(name, value)| Some(json!({ "name": name, "value": value.as_ref()? })))
        .collect();
    if !props.is_empty() {
        v["properties"] = json!(props);
    }
    v
}

/// The CycloneDX document (see [`super::render`]).
pub(super) fn render(inv: &Inventory, meta: &DocMeta) -> Value {
    let os = inv.os.as_ref();
    let serial = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, meta.namespace.as_bytes());
    let mut os_component = json!({
        "type": "operating-system",
        "bom-ref": "os",
        "name": os.map_or("unknown", |o| o.id.as_str()),
    });
    if let Some(v) = os.and_then(|o| o.version_id.as_ref()) {
        os_component["version"] = json!(v);
    }
    if let Some(pretty) = os.and_then(|o| o.pretty_name.as_ref()) {
        os_component["description"] = json!(pretty);
    }
    let kernel_kind = super::kernel_kind(&inv.packages);
    let kernels = inv
        .kernels
        .iter()
        .map(|v| (super::kernel_package(v, kernel_kind), purl::kernel(v)));
    let components: Vec<Value> = inv
        .packages
        .iter()
        .map(|p| (p.clone(), purl::of(p, os)))
        .chain(kernels)
        .enumerate()
        .map(|(n, (p, purl))| component(&p, purl, n + 1))
        .collect();
    let refs: Vec<Value> = components.iter().map(|c| c["bom-ref"].clone()).collect();
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": format!("urn:uuid:{serial}"),
        "version": 1,
        "metadata": {
            "timestamp": meta.created,
            "tools": {
                "components": [{
                    "type": "application",
                    "name": "kiln",
                    "version": env!("CARGO_PKG_VERSION"),
                }],
            },
            "component": os_component,
            "properties": [{ "name": "kiln:document-name", "value": meta.name }],
        },
        "components": components,
        "dependencies": [{ "ref": "os", "dependsOn": refs }],
    })
}

/// The packages of a CycloneDX document (see [`super::packages_of`]).
pub(super) fn packages_of(doc: &Value) -> Result<Vec<Package>, SbomError> {
    let mut out = Vec::new();
    for (i, v) in entries(doc, "components")?.iter().enumerate() {
        let at = format!("/components/{i}");
        if v.get("type").and_then(Value::as_str) == Some("operating-system") {
            continue;
        }
        let name = required(v, &at, "name")?;
        let purl = required(v, &at, "purl")?;
        let (ty, arch) = purl::parse(purl)
            .ok_or_else(|| super::format::doc_error(&format!("{at}/purl"), "not a purl"))?;
        let prop = |key: &str| {
            v.get("properties")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(key))
                .and_then(|p| p.get("value"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let license = v
            .pointer("/licenses/0/expression")
            .or_else(|| v.pointer("/licenses/0/license/name"))
            .or_else(|| v.pointer("/licenses/0/license/id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        out.push(Package {
            name: name.to_owned(),
            version: required(v, &at, "version")?.to_owned(),
            arch: prop(ARCH).or(arch),
            source: prop(SOURCE),
            license,
            kind: kind_of(&ty, name, &at)?,
        });
    }
    Ok(out)
}
