"""Checks that the stack's IAM roles allow every AWS call kiln makes, and name which statement
allows each: for the worker, its build calls (EC2, Parameter Store, Secrets Manager) against a
team's build role (BuildPolicy, with the default team's DefaultBuildRole) and its own calls (S3,
SQS, Auto Scaling, STS to assume the build roles) against the builders' role (BuilderRole); the
trigger role for kiln-trigger's. By action name only: scripts/check_team_policy.py evaluates the
conditions and resources of each call, and the cross-team attempts. The calls are read from kiln's sources: every `.operation()` of the AWS
SDK for Rust (the operations are the SDK crates' own `src/operation/` modules), in a role's own
files and in the library functions they call (with the functions of the same file those call).

    python scripts/check_policy.py [TEMPLATE]      exit 1 when a call has no statement
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import sys

from cfnlint.decode import cfn_yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Operator commands (kiln gc, submit, status, promote, revoke) run with the operator's credentials, not a role of
# the stack; the worker and the trigger run under the stack's roles.
ROLES = {
    "BuilderRole": lambda p: not (p.startswith("src/trigger/") or p.startswith("src/bin/")
                                  or p in ("src/main.rs", "src/gc.rs", "src/release.rs",
                                            "src/cli/lineage.rs")),
    "TriggerRole": lambda p: p.startswith("src/trigger/") or p == "src/bin/kiln-trigger.rs",
}
# Where each of the worker's calls is made: a build's EC2 calls and data-source reads with its
# team's build role (assumed through STS with the kiln:team session tag); the rest with the
# builders' own role.
BUILD_SERVICES = ("ec2:", "ebs:", "ssm:", "secretsmanager:")
# Calls the SDK makes for kiln rather than through an `.operation()` in kiln's sources: the
# worker's AssumeRoleProvider (aws-config) for each team's build role, with session tags.
IMPLICIT = {"BuilderRole": {"sts:AssumeRole": "src/worker/mod.rs:team_clients",
                            "sts:TagSession": "src/worker/mod.rs:team_clients"}}
# SDK operations whose IAM action has another name.
ACTION_NAMES = {
    ("s3", "ListObjectsV2"): "ListBucket",
    ("s3", "HeadObject"): "GetObject",
}


def sdk_operations() -> dict[str, set[str]]:
    lock = open(os.path.join(ROOT, "Cargo.lock"), encoding="utf-8").read()
    home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    ops: dict[str, set[str]] = {}
    for svc in ("ec2", "ebs", "s3", "sqs", "autoscaling", "ssm", "secretsmanager"):
        m = re.search(rf'name = "aws-sdk-{svc}"\nversion = "([^"]+)"', lock)
        if not m:
            sys.exit(f"check_policy: aws-sdk-{svc} is not in Cargo.lock")
        dirs = glob.glob(os.path.join(home, "registry/src/*", f"aws-sdk-{svc}-{m.group(1)}", "src/operation"))
        if not dirs:
            sys.exit(f"check_policy: the sources of aws-sdk-{svc} {m.group(1)} are missing; run: cargo fetch")
        ops[svc] = {os.path.splitext(n)[0] for n in os.listdir(dirs[0])}
    return ops


def pascal(snake: str) -> str:
    return "".join(w[:1].upper() + w[1:] for w in snake.split("_"))


def calls(ops: dict[str, set[str]], accept) -> dict[str, list[str]]:
    """{"ec2:CreateVolume": ["src/pipeline/...rs:12", ...]} for the files `accept` takes."""
    found: dict[str, list[str]] = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "src/**/*.rs"), recursive=True)):
        rel = os.path.relpath(path, ROOT)
        if not accept(rel):
            continue
        text = open(path, encoding="utf-8").read()
        # Only code: drop line comments (doc comments name operations too).
        code = re.sub(r"//[^\n]*", "", text)
        for m in re.finditer(r"\.([a-z][a-z0-9_]*)\(\)", code):
            op = m.group(1)
            services = [s for s, names in ops.items() if op in names]
            if not services:
                continue
            if len(services) > 1:
                before = code[max(0, m.start() - 300):m.start()]
                services = [s for s in services if re.search(rf"\b{s}\b", before)] or services[:1]
            svc = services[0]
            action = ACTION_NAMES.get((svc, pascal(op)), pascal(op))
            line = code.count("\n", 0, m.start()) + 1
            found.setdefault(f"{svc}:{action}", []).append(f"{rel}:{line}")
    for where, body in library_functions(accept):
        for m in re.finditer(r"\.([a-z][a-z0-9_]*)\(\)", body):
            for svc, names in ops.items():
                if m.group(1) in names:
                    action = ACTION_NAMES.get((svc, pascal(m.group(1))), pascal(m.group(1)))
                    found.setdefault(f"{svc}:{action}", []).append(where)
                    break
    return found


def library_functions(accept) -> list[tuple[str, str]]:
    """(where, body) of the library functions the accepted files call by path (`crate::a::b::f(`
    or `kiln::a::b::f(`): a role must allow the calls those make too (one level deep)."""
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "src/**/*.rs"), recursive=True)):
        rel = os.path.relpath(path, ROOT)
        if not accept(rel):
            continue
        code = re.sub(r"//[^\n]*", "", open(path, encoding="utf-8").read())
        for m in re.finditer(r"\b(?:crate|kiln)::((?:[a-z_][a-z0-9_]*::)+)([a-z_][a-z0-9_]*)\(", code):
            module = m.group(1).rstrip(":").replace("::", "/")
            for candidate in (f"src/{module}.rs", f"src/{module}/mod.rs"):
                full = os.path.join(ROOT, candidate)
                if not os.path.exists(full) or accept(candidate):
                    continue
                text = re.sub(r"//[^\n]*", "", open(full, encoding="utf-8").read())
                # The function and, transitively, the functions of its file it calls.
                bodies = {f.group(1): f.group(0) for f in
                          re.finditer(r"\bfn ([a-z_][a-z0-9_]*)\b.*?\n}\n", text, re.S)}
                todo, seen = [m.group(2)], set()
                while todo:
                    name = todo.pop()
                    if name in seen or name not in bodies:
                        continue
                    seen.add(name)
                    out.append((f"{candidate}:{name}", bodies[name]))
                    todo.extend(c for c in re.findall(r"\b([a-z_][a-z0-9_]*)\(", bodies[name]) if c in bodies)
    return out


def statements(template: dict, role: str) -> list[dict]:
    """The Allow statements of the role's inline policies and of the managed policies of the same
    template it names (ManagedPolicyArns: !Ref X)."""
    props = template["Resources"][role]["Properties"]
    docs = [p["PolicyDocument"] for p in props.get("Policies", [])]
    for ref in props.get("ManagedPolicyArns", []):
        if isinstance(ref, dict) and "Ref" in ref and ref["Ref"] in template["Resources"]:
            docs.append(template["Resources"][ref["Ref"]]["Properties"]["PolicyDocument"])
    out = []
    for doc in docs:
        for st in doc["Statement"]:
            if isinstance(st, dict) and "Fn::If" in st:
                st = st["Fn::If"][1]  # the statement when its condition holds
            if isinstance(st, dict) and st.get("Effect") == "Allow":
                out.append(st)
    return out


def allowed_by(action: str, sts: list[dict]) -> list[str]:
    hits = []
    for st in sts:
        acts = st.get("Action", [])
        acts = [acts] if isinstance(acts, str) else acts
        if any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in acts):
            hits.append(st.get("Sid", "?"))
    return hits


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "infra/kiln.yaml")
    template = cfn_yaml.load(path)
    ops = sdk_operations()
    missing = 0
    for role, accept in ROLES.items():
        found = calls(ops, accept)
        if not found:
            print(f"{role}: no AWS calls found in kiln's sources (the scan is broken)")
            missing += 1
        for action, where in IMPLICIT.get(role, {}).items():
            found.setdefault(action, [where])
        for action in sorted(found):
            # The worker's build calls: the default team's build role (BuildPolicy + its own).
            who = "DefaultBuildRole" if role == "BuilderRole" and action.startswith(BUILD_SERVICES) else role
            sids = allowed_by(action, statements(template, who))
            where = found[action][0]
            role_name = f"{role} ({who})" if who != role else role
            if sids:
                print(f"{role_name}: {action} ({where}) allowed by {', '.join(sids)}")
            else:
                print(f"{role_name}: {action} ({where}) is NOT allowed by any statement")
                missing += 1
    if missing:
        print(f"check_policy: {missing} call(s) kiln makes are not allowed by {path}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
