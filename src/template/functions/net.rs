//! Packer's IP network functions: `cidrhost`, `cidrnetmask`, `cidrsubnet`, `cidrsubnets`
//! (IPv4 and IPv6, as Terraform defines them). Bit counts and numbers are checked (a prefix
//! length past the address's width, a shift by 128, an address past the last one are errors).

use super::limits;
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

/// `v` as a number of additional prefix bits for `n`: the new prefix length, at most the width.
fn new_len(f: &str, n: &IpNet, v: &Value) -> Result<(u8, u8), String> {
    let (_, width) = bits(n.network());
    let newbits = limits::count(f, v, 128)?;
    let len = usize::from(n.prefix_len()) + newbits;
    if len > usize::from(width) {
        return Err(format!("{f}: {newbits} more bits do not fit in {n}"));
    }
    Ok((newbits as u8, len as u8))
}

/// The `num`th subnet of `n` with `newbits` more prefix bits (the new length `len`).
fn subnet(f: &str, n: &IpNet, (newbits, len): (u8, u8), netnum: u128) -> Result<IpNet, String> {
    let (base, width) = bits(n.network());
    if newbits < 128 && netnum >= 1u128 << newbits {
        return Err(format!("{f}: {netnum} does not fit in {newbits} bits"));
    }
    // A shift by the whole width (a /0 split into one) only ever shifts 0.
    let v = base | netnum.checked_shl(u32::from(width - len)).unwrap_or(0);
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
                if !host.is_finite() || host.fract() != 0.0 {
                    return Err(format!("cidrhost: {host} is not a whole host number"));
                }
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
                let bits = new_len("cidrsubnet", &n, &a[1])?;
                let netnum = limits::count("cidrsubnet", &a[2], usize::MAX)? as u128;
                let sub = subnet("cidrsubnet", &n, bits, netnum)?;
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
                // None once the last address is used.
                let mut next: Option<u128> = Some(bits(n.network()).0);
                let mut out = Vec::new();
                let full = || format!("cidrsubnets: not enough space in {n}");
                for b in a.iter().skip(1) {
                    let (_, len) = new_len("cidrsubnets", &n, b)?;
                    let Some(next_start) = next else {
                        return Err(full());
                    };
                    // 2^128 for a /0 of IPv6 does not fit: such a subnet starts at 0 or not at all.
                    let size = 1u128.checked_shl(u32::from(width - len));
                    // Align to this subnet's size, as Terraform allocates consecutively.
                    let start = match size {
                        Some(size) => next_start
                            .div_ceil(size)
                            .checked_mul(size)
                            .ok_or_else(full)?,
                        None if next_start == 0 => 0,
                        None => return Err(full()),
                    };
                    let sub = IpNet::new(addr(start, width), len)
                        .map_err(|e| format!("cidrsubnets: {e}"))?;
                    if !n.contains(&sub) {
                        return Err(full());
                    }
                    out.push(Value::from(sub.to_string()));
                    next = size.and_then(|size| start.checked_add(size));
                }
                Ok(Value::Array(out))
            }),
    );
}

#[cfg(test)]
mod tests {
    use super::super::eval;
    use hcl::Value;

    #[test]
    fn bit_counts_and_addresses_are_checked() {
        assert_eq!(
            eval(r#"cidrsubnet("10.0.0.0/8", 8, 2)"#),
            Ok(Value::from("10.2.0.0/16"))
        );
        // Used to overflow `u8` (24 + 255) and to shift by 128.
        for expr in [
            r#"cidrsubnet("10.0.0.0/24", 300, 1)"#,
            r#"cidrsubnet("10.0.0.0/24", -1, 1)"#,
            r#"cidrsubnet("10.0.0.0/24", 4, -1)"#,
            r#"cidrsubnet("10.0.0.0/24", 4, 1e30)"#,
            r#"cidrsubnets("10.0.0.0/24", 300)"#,
            r#"cidrsubnets("::/0", 1, 1, 1)"#,
            r#"cidrhost("10.0.0.0/24", 1e300)"#,
            r#"cidrhost("10.0.0.0/24", 0.5)"#,
        ] {
            assert!(eval(expr).is_err(), "{expr}");
        }
        assert_eq!(eval(r#"cidrsubnet("::/0", 0, 0)"#), Ok(Value::from("::/0")));
        assert_eq!(
            eval(r#"cidrsubnets("::/0", 1, 1)"#),
            Ok(Value::Array(vec![
                Value::from("::/1"),
                Value::from("8000::/1")
            ]))
        );
        assert_eq!(
            eval(r#"cidrsubnets("::/0", 0)"#),
            Ok(Value::Array(vec![Value::from("::/0")]))
        );
    }
}
