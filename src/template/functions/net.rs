//! Packer's IP network functions: `cidrhost`, `cidrnetmask`, `cidrsubnet`, `cidrsubnets`
//! (IPv4 and IPv6, as Terraform defines them).

use super::{num, s};
use hcl::Value;
use hcl::eval::{Context, FuncDef, ParamType};
use ipnet::IpNet;
use std::net::IpAddr;

fn net(f: &str, v: &Value) -> Result<IpNet, String> {
    let t = s(v);
    t.parse::<IpNet>()
        .map_err(|_| format!("{f}: \"{t}\" is not a CIDR prefix such as 10.0.0.0/16"))
}

fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

fn addr(v: u128, width: u8) -> IpAddr {
    if width == 32 {
        IpAddr::V4(std::net::Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(std::net::Ipv6Addr::from(v))
    }
}

/// The `num`th subnet of `n` with `newbits` more prefix bits.
fn subnet(f: &str, n: &IpNet, newbits: u8, netnum: u128) -> Result<IpNet, String> {
    let (base, width) = bits(n.network());
    let len = n.prefix_len() + newbits;
    if len > width {
        return Err(format!("{f}: {newbits} more bits do not fit in {n}"));
    }
    if newbits < 128 && netnum >= 1u128 << newbits {
        return Err(format!("{f}: {netnum} does not fit in {newbits} bits"));
    }
    let shift = width - len;
    let v = base | (netnum << shift);
    IpNet::new(addr(v, width), len).map_err(|e| format!("{f}: {e}"))
}

/// Declares the functions on `ctx`.
pub(super) fn declare(ctx: &mut Context<'_>) {
    ctx.declare_func(
        "cidrhost",
        FuncDef::builder()
            .params([ParamType::String, ParamType::Number])
            .build(|a| {
                let n = net("cidrhost", &a[0])?;
                let host = num(&a[1])?;
                let (base, width) = bits(n.network());
                let size = 1u128 << (width - n.prefix_len()).min(127);
                let h = if host < 0.0 { size as f64 + host } else { host };
                if h < 0.0 || h >= size as f64 {
                    return Err(format!("cidrhost: prefix {n} has no host number {host}"));
                }
                Ok(Value::from(addr(base + h as u128, width).to_string()))
            }),
    );
    ctx.declare_func(
        "cidrnetmask",
        FuncDef::builder().param(ParamType::String).build(|a| {
            let n = net("cidrnetmask", &a[0])?;
            match n {
                IpNet::V4(v) => Ok(Value::from(v.netmask().to_string())),
                IpNet::V6(_) => Err("cidrnetmask: IPv6 prefixes have no netmask form".into()),
            }
        }),
    );
    ctx.declare_func(
        "cidrsubnet",
        FuncDef::builder()
            .params([ParamType::String, ParamType::Number, ParamType::Number])
            .build(|a| {
                let n = net("cidrsubnet", &a[0])?;
                let sub = subnet("cidrsubnet", &n, num(&a[1])? as u8, num(&a[2])? as u128)?;
                Ok(Value::from(sub.to_string()))
            }),
    );
    ctx.declare_func(
        "cidrsubnets",
        FuncDef::builder()
            .param(ParamType::String)
            .variadic_param(ParamType::Number)
            .build(|a| {
                let n = net("cidrsubnets", &a[0])?;
                let (_, width) = bits(n.network());
                let mut next: u128 = bits(n.network()).0;
                let mut out = Vec::new();
                for b in a.iter().skip(1) {
                    let newbits = num(b)? as u8;
                    let len = n.prefix_len() + newbits;
                    if len > width {
                        return Err(format!(
                            "cidrsubnets: {newbits} more bits do not fit in {n}"
                        ));
                    }
                    let size = 1u128 << (width - len);
                    // Align to this subnet's size, as Terraform allocates consecutively.
                    let start = next.div_ceil(size) * size;
                    let sub = IpNet::new(addr(start, width), len)
                        .map_err(|e| format!("cidrsubnets: {e}"))?;
                    if !n.contains(&sub) {
                        return Err(format!("cidrsubnets: not enough space in {n}"));
                    }
                    out.push(Value::from(sub.to_string()));
                    next = start + size;
                }
                Ok(Value::Array(out))
            }),
    );
}
