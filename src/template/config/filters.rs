//! `source_ami_filter` and the `amazon-ami` data source: DescribeImages filters, owners and
//! `most_recent`, with Packer's owner rule.

use crate::template::decode::Fields;
use serde::Serialize;
use std::collections::BTreeMap;

/// `source_ami_filter`, or an `amazon-ami` data source.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct AmiFilter {
    /// DescribeImages filters.
    pub filters: BTreeMap<String, String>,
    /// Owner ids or aliases.
    pub owners: Vec<String>,
    /// Pick the newest when several match.
    pub most_recent: bool,
}

/// Reads a `source_ami_filter` (or `amazon-ami` data source) object.
pub fn decode_filter_node(
    node: &crate::template::node::Node,
    path: String,
    diags: &mut Vec<crate::template::Diagnostic>,
    ctx: &crate::template::gotmpl::Ctx,
) -> AmiFilter {
    let mut g = Fields::new(node, path, diags, ctx);
    let filter = AmiFilter {
        filters: g.string_map("filters", &[]).unwrap_or_default(),
        owners: g.string_list("owners", &[]).unwrap_or_default(),
        most_recent: g.bool("most_recent").unwrap_or(false),
    };
    // HCL2 data sources may carry access settings; kiln uses the build's.
    for k in [
        "region",
        "profile",
        "access_key",
        "secret_key",
        "include_deprecated",
    ] {
        let _ = g.raw(k);
    }
    if filter.owners.is_empty()
        && !filter.filters.contains_key("owner-id")
        && !filter.filters.contains_key("owner-alias")
    {
        g.error(
            "owners",
            "For security reasons, your source AMI filter must declare an owner.",
        );
    }
    if filter.filters.is_empty() && filter.owners.is_empty() {
        g.error(
            "filters",
            "source_ami_filter needs filters or owners to select an image",
        );
    }
    g.finish(&[]);
    filter
}

pub(super) fn decode_filter(f: &mut Fields<'_>) -> Option<AmiFilter> {
    let node = f.raw("source_ami_filter")?;
    let node = match &node.value {
        crate::template::node::Value::Array(a) if a.len() == 1 => &a[0],
        _ => node,
    };
    let mut diags = Vec::new();
    let filter = decode_filter_node(node, f.field("source_ami_filter"), &mut diags, f.ctx);
    f.diags.append(&mut diags);
    Some(filter)
}
