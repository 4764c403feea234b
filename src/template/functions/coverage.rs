//! Tests for the functions no other test named: expected values from Packer 1.6.6's `packer
//! console --config-type=hcl2` where it has the function, else from Terraform's documentation
//! (the functions Packer took from it later).

use super::eval;
use hcl::Value;

fn json(expr: &str) -> String {
    eval(expr)
        .map(|v| serde_json::to_string(&v).expect("json"))
        .unwrap_or_else(|e| format!("error: {e}"))
}

#[test]
fn each_function_gives_packers_answer() {
    let home = std::env::var("HOME").unwrap_or_default();
    let cases: Vec<(&str, String)> = vec![
        // packer console 1.6.6
        ("abs(-12.4)", "12.4".into()),
        ("abs(0)", "0".into()),
        (r#"chomp("hello\n\n")"#, r#""hello""#.into()),
        (r#"chomp("hello\r\n")"#, r#""hello""#.into()),
        (r#"compact(["a", "", "b", ""])"#, r#"["a","b"]"#.into()),
        (
            r#"distinct(["a", "b", "a", "c", "d", "b"])"#,
            r#"["a","b","c","d"]"#.into(),
        ),
        ("keys({a = 1, c = 2, d = 3})", r#"["a","c","d"]"#.into()),
        ("min(12, 54, 3)", "3".into()),
        (r#"title("hello world")"#, r#""Hello World""#.into()),
        (r#"trimsuffix("helloworld", "world")"#, r#""hello""#.into()),
        (r#"dirname("foo/bar/baz.txt")"#, r#""foo/bar""#.into()),
        (
            r#"pathexpand("~/.ssh/id_rsa")"#,
            format!(r#""{home}/.ssh/id_rsa""#),
        ),
        // Terraform's documentation
        (
            r#"base64sha512("hello world")"#,
            r#""MJ7MSJwS1utMxA9QyQLytNDtd+5RGnx6m808qG1M2G+YndNbxf9JlnDaNCVbRbDP2DDoH2Bdz33FVC6TrpzXbw==""#.into(),
        ),
        (
            r#"regex("[a-z]+", "53453453.345345aaabbbccc23454")"#,
            r#""aaabbbccc""#.into(),
        ),
        (
            r#"regex("(\\d\\d\\d\\d)-(\\d\\d)-(\\d\\d)", "2019-02-01")"#,
            r#"["2019","02","01"]"#.into(),
        ),
        (
            r#"regex("^(?:(?P<scheme>[^:/?#]+):)?(?://(?P<authority>[^/?#]*))?", "https://terraform.io/docs/")"#,
            r#"{"authority":"terraform.io","scheme":"https"}"#.into(),
        ),
        (r#"startswith("hello world", "hello")"#, "true".into()),
        (r#"startswith("hello world", "world")"#, "false".into()),
        (r#"endswith("hello world", "world")"#, "true".into()),
        (r#"strcontains("hello world", "wor")"#, "true".into()),
        (r#"strcontains("hello world", "cat")"#, "false".into()),
        (r#"tobool("true")"#, "true".into()),
        ("tobool(false)", "false".into()),
        (r#"tolist(["a", "b", "c"])"#, r#"["a","b","c"]"#.into()),
        (r#"tomap({"a" = 1, "b" = 2})"#, r#"{"a":1,"b":2}"#.into()),
        (r#"tonumber("1")"#, "1".into()),
        ("tonumber(5)", "5".into()),
        (r#"toset(["c", "b", "b"])"#, r#"["b","c"]"#.into()),
    ];
    for (expr, want) in &cases {
        assert_eq!(json(expr), *want, "{expr}");
    }
    for bad in [
        r#"tobool("yes")"#,
        r#"tonumber("x")"#,
        r#"regex("[0-9]+", "abc")"#,
    ] {
        assert!(json(bad).starts_with("error"), "{bad}: {}", json(bad));
    }
}

#[test]
fn file_path_functions_resolve_against_the_working_directory() {
    let dir = std::env::temp_dir().join(format!("kiln-cov-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("here.txt"), "x").expect("file");
    super::set_cwd(&dir);
    assert_eq!(eval(r#"fileexists("here.txt")"#), Ok(Value::from(true)));
    assert_eq!(eval(r#"fileexists("missing.txt")"#), Ok(Value::from(false)));
    assert_eq!(
        eval(r#"abspath("here.txt")"#),
        Ok(Value::from(dir.join("here.txt").display().to_string()))
    );
    super::set_cwd(std::path::Path::new("."));
    let _ = std::fs::remove_dir_all(&dir);
}
