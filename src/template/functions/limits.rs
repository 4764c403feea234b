//! Bounds on what template functions may build, checked before the allocation: a template comes
//! from whoever sends a build request, and a worker process hosts other teams' builds, so no
//! function call may exhaust its memory, hang it or panic it. Exceeding a bound is an evaluation
//! error that names the function and the limit.
//!
//! Besides the bounds on one value, every function that can grow its output charges it to a
//! budget of the whole evaluation ([`reset_budget`] starts one per template load): a `for`
//! expression calling a function a million times cannot add up what one call may not build.

use hcl::Value;
use std::cell::Cell;

/// The longest string a function may build or read, in bytes: 16 MiB. A thousand times EC2's
/// largest text input (16 KiB of user data); the files templates read (scripts, cloud-init
/// documents, keys) are kilobytes.
pub const MAX_STRING_BYTES: usize = 16 << 20;

/// The most elements one collection built by a function may hold: 1,000,000 (about 64 MB of
/// values). A template's lists are regions, tags, block devices, users: tens, not millions.
pub const MAX_ELEMENTS: usize = 1_000_000;

/// The most bytes `file()`, `templatefile()` and friends read from one file: the same 16 MiB as
/// any string (their result is one).
pub const MAX_FILE_BYTES: u64 = MAX_STRING_BYTES as u64;

/// What all the function calls of one template load may build together, in bytes (a string
/// counts its length, a collection [`ELEMENT_BYTES`] per element): 256 MiB, sixteen strings of the
/// largest size.
pub const EVAL_BUDGET_BYTES: usize = 256 << 20;

/// The most one evaluated value (a variable, a local, an attribute) may weigh, counted as the
/// budget counts: 128 MiB, eight strings of the largest size. Checked after each expression, it
/// stops locals that double one another (`"${local.a}${local.a}"`) at the first one too large.
pub const MAX_VALUE_BYTES: usize = 128 << 20;

/// What one element of a collection counts against the budget: about the size of an HCL value.
pub const ELEMENT_BYTES: usize = 64;

thread_local! {
    static SPENT: Cell<usize> = const { Cell::new(0) };
}

/// Starts a new evaluation budget for this thread (the template loader calls it per load).
pub fn reset_budget() {
    SPENT.with(|s| s.set(0));
}

fn mib(n: usize) -> usize {
    n >> 20
}

/// Whether a string of `len` bytes may be built by `f`.
pub(crate) fn string_len(f: &str, len: usize) -> Result<(), String> {
    if len > MAX_STRING_BYTES {
        return Err(format!(
            "{f}: the result would be {len} bytes, more than kiln's limit of {} MiB for one string",
            mib(MAX_STRING_BYTES)
        ));
    }
    Ok(())
}

/// Whether a collection of `n` elements may be built by `f`.
pub(super) fn elements(f: &str, n: usize) -> Result<(), String> {
    if n > MAX_ELEMENTS {
        return Err(format!(
            "{f}: the result would have {n} elements, more than kiln's limit of {MAX_ELEMENTS} for one collection"
        ));
    }
    Ok(())
}

/// `a * b`, or an error naming `f` when it overflows (then it is over every limit anyway).
pub(super) fn mul(f: &str, a: usize, b: usize) -> Result<usize, String> {
    a.checked_mul(b)
        .ok_or_else(|| format!("{f}: the result would be too large ({a} × {b})"))
}

/// `a + b`, or an error naming `f` when it overflows.
pub(super) fn add(f: &str, a: usize, b: usize) -> Result<usize, String> {
    a.checked_add(b)
        .ok_or_else(|| format!("{f}: the result would be too large ({a} + {b})"))
}

/// Whether replacing (at most `max` of) the matches of `old` in `src` by `new` stays within the
/// string limit; an empty `old` matches between every two characters, as Go's `strings.Replace`.
pub(crate) fn replacement(
    f: &str,
    src: &str,
    old: &str,
    new: &str,
    max: usize,
) -> Result<(), String> {
    let n = if old.is_empty() {
        src.chars().count().saturating_add(1)
    } else {
        src.matches(old).count()
    }
    .min(max);
    let kept = src.len() - n * old.len();
    string_len(f, add(f, kept, mul(f, n, new.len())?)?)
}

/// The size `v` counts against the budget, counting no further than `stop`.
fn weight(v: &Value, stop: usize) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(items) => {
            let mut n = items.len().saturating_mul(ELEMENT_BYTES);
            for x in items {
                if n > stop {
                    break;
                }
                n = n.saturating_add(weight(x, stop));
            }
            n
        }
        Value::Object(m) => {
            let mut n = m.len().saturating_mul(ELEMENT_BYTES);
            for (k, x) in m {
                if n > stop {
                    break;
                }
                n = n.saturating_add(k.len()).saturating_add(weight(x, stop));
            }
            n
        }
        _ => 0,
    }
}

/// Whether an evaluated value is within [`MAX_VALUE_BYTES`].
pub(crate) fn value(v: &Value) -> Result<(), String> {
    if weight(v, MAX_VALUE_BYTES) > MAX_VALUE_BYTES {
        return Err(format!(
            "the value is larger than kiln's limit of {} MiB for one value",
            mib(MAX_VALUE_BYTES)
        ));
    }
    Ok(())
}

/// Charges `bytes` built by `f` to this evaluation's budget.
pub(crate) fn spend(f: &str, bytes: usize) -> Result<(), String> {
    let spent = SPENT.with(|s| {
        let total = s.get().saturating_add(bytes);
        s.set(total);
        total
    });
    if spent > EVAL_BUDGET_BYTES {
        return Err(format!(
            "{f}: the template's function calls built more than {} MiB in all, kiln's limit for one template",
            mib(EVAL_BUDGET_BYTES)
        ));
    }
    Ok(())
}

/// Charges the value `f` built to this evaluation's budget, and hands it back.
pub(crate) fn charge(f: &str, v: Value) -> Result<Value, String> {
    spend(f, weight(&v, EVAL_BUDGET_BYTES))?;
    Ok(v)
}

/// `v` as a whole number (an index, a count, a width) within `i64`, or an error naming `f`.
pub(super) fn int(f: &str, v: &Value) -> Result<i64, String> {
    let x = super::num(v).map_err(|e| format!("{f}: {e}"))?;
    // `i64::MAX as f64` rounds to 2^63 exactly; anything at or beyond it (or NaN, or fractional)
    // is refused.
    if !x.is_finite() || x.fract() != 0.0 || x.abs() >= i64::MAX as f64 {
        return Err(format!("{f}: {x} is not a whole number kiln can use here"));
    }
    Ok(x as i64)
}

/// `v` as a count or size (`0..=max`), or an error naming `f` and the limit.
pub(super) fn count(f: &str, v: &Value, max: usize) -> Result<usize, String> {
    let n = int(f, v)?;
    if n < 0 {
        return Err(format!("{f}: {n} must not be negative"));
    }
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if n > max {
        return Err(format!("{f}: {n} is more than kiln's limit of {max} here"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_outside_i64_are_errors() {
        for bad in [1e21, f64::MAX, -1e19, 0.5] {
            let v = Value::Number(hcl::Number::from_f64(bad).expect("finite"));
            assert!(int("t", &v).is_err(), "{bad}");
        }
        assert_eq!(int("t", &Value::from(-5)), Ok(-5));
        assert!(count("t", &Value::from(-1), 10).is_err());
        assert!(count("t", &Value::from(11), 10).is_err());
        assert_eq!(count("t", &Value::from(10), 10), Ok(10));
    }

    #[test]
    fn the_budget_adds_up_and_resets() {
        reset_budget();
        let big = Value::from("x".repeat(MAX_STRING_BYTES));
        for _ in 0..(EVAL_BUDGET_BYTES / MAX_STRING_BYTES) {
            assert!(charge("f", big.clone()).is_ok());
        }
        let e = charge("f", big.clone()).expect_err("over the budget");
        assert!(e.contains("256 MiB"), "{e}");
        reset_budget();
        assert!(charge("f", big).is_ok());
        reset_budget();
    }
}
