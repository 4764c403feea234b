"""The teams' boundary, proved on the stack's policies (the emulator does not evaluate IAM).

Resolves infra/kiln.yaml (the pool with its default team) and infra/kiln-team.yaml (a second team,
`payments`) into concrete policy documents, then evaluates, statement by statement, every call kiln
makes with the resource ARNs, tags and keys it uses (each team's build role for EC2 and data
sources, the builders' role for S3 under the team's prefix and SQS, the team's principals, the
triggers) and every cross-team attempt (team B's role or principals on team A's volumes,
snapshots, images, instances, secrets, parameters, queue and documents). Prints a table of the
calls, allowed or denied, and the statements that decide; exit 1 when any call's outcome is not
the expected one.

Two checks, because an evaluator is only as right as its model of each call:
- the evaluator (below): Allow and Deny statements; Action and Resource wildcards; conditions
  StringEquals, StringLike, StringNotLike, ArnLike, ArnNotLike, Null, ForAllValues:StringEquals;
  policy variables (${aws:PrincipalTag/...}, ${aws:RequestTag/...}: unresolvable makes the
  statement not apply, as in IAM); identity and resource policies (allowed if either allows, within
  one account; any Deny wins). Tested on known cases at start (self_test).
- parliament's IAM definition (the Service Authorization Reference as data): every condition key of
  an Allow statement must exist for the action on the statement's resource types, or the statement
  could never match on AWS (a RequestTag key on a resource that is not created, say), however the
  evaluator's model of the call says.

    python scripts/check_team_policy.py [POOL_TEMPLATE [TEAM_TEMPLATE]]
"""

from __future__ import annotations

import fnmatch
import os
import re
import sys

from cfnlint.decode import cfn_yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCOUNT, REGION, PARTITION = "123456789012", "us-east-1", "aws"
POOL = "kiln"
BUCKET = "kiln-artifacts"
SUBNETS = ["subnet-0a", "subnet-0b"]
VPC = "vpc-01"
SELF = "i-0self"  # the builder making the calls
OTHER_INSTANCE = "i-0other"  # another instance in the account
PUBLIC_OWNER = "136693071363"  # a listed publisher (Debian)
UNLISTED_OWNER = "999999999999"


# ---------------------------------------------------------------------------------------------
# CloudFormation: the templates' intrinsic functions with concrete parameters.

class Stack:
    def __init__(self, path: str, name: str, params: dict, atts: dict):
        self.t = cfn_yaml.load(path)
        self.name, self.atts = name, atts
        self.params = {}
        for k, p in self.t.get("Parameters", {}).items():
            v = params.get(k, p.get("Default"))
            if p.get("Type") == "CommaDelimitedList" or (p.get("Type", "").startswith("List<")):
                v = [x for x in (v if isinstance(v, list) else str(v or "").split(","))]
            self.params[k] = v
        self.conds = {k: self.eval(v) for k, v in self.t.get("Conditions", {}).items()}

    def ref(self, name):
        pseudo = {"AWS::AccountId": ACCOUNT, "AWS::Region": REGION, "AWS::Partition": PARTITION,
                  "AWS::StackName": self.name}
        if name in pseudo:
            return pseudo[name]
        if name in self.params:
            return self.params[name]
        return self.atts.get(f"{name}.Ref", f"{name}-ref")

    def getatt(self, name, att):
        return self.atts.get(f"{name}.{att}", f"{name}-{att}")

    def sub(self, s, extra=None):
        def rep(m):
            v = m.group(1)
            if v.startswith("!"):
                return "${" + v[1:] + "}"
            if extra and v in extra:
                return str(extra[v])
            if "." in v:
                return str(self.getatt(*v.split(".", 1)))
            r = self.ref(v)
            return ",".join(r) if isinstance(r, list) else str(r)
        return re.sub(r"\$\{([^}]+)\}", rep, s)

    def eval(self, x):
        if isinstance(x, dict):
            if len(x) == 1:
                (k, v), = x.items()
                if k == "Ref":
                    return self.ref(v)
                if k == "Fn::GetAtt":
                    return self.getatt(*(v if isinstance(v, list) else v.split(".", 1)))
                if k == "Fn::Sub":
                    if isinstance(v, list):
                        return self.sub(v[0], {a: self.eval(b) for a, b in v[1].items()})
                    return self.sub(v)
                if k == "Fn::Join":
                    parts = self.eval(v[1])
                    return v[0].join(str(p) for p in parts)
                if k == "Fn::Split":
                    return self.eval(v[1]).split(v[0])
                if k == "Fn::If":
                    return self.eval(v[1] if self.conds[v[0]] else v[2])
                if k == "Fn::Not":
                    return not self.eval(v[0])
                if k == "Fn::Equals":
                    return self.eval(v[0]) == self.eval(v[1])
                if k == "Condition":
                    return self.conds[v]
            out = {}
            for k, v in x.items():
                r = self.eval(v)
                if r is not NOVALUE:
                    out[k] = r
            return out
        if isinstance(x, list):
            out = []
            for v in x:
                r = self.eval(v)
                if r is NOVALUE:
                    continue
                out.append(r)
            return out
        if x == "AWS::NoValue":
            return x
        return x

    def resource(self, name):
        return self.t["Resources"][name]

    def role_policies(self, role):
        """The role's identity policies: inline ones and the managed ones of this stack."""
        props = self.resource(role)["Properties"]
        docs = [self.eval(p["PolicyDocument"]) for p in props.get("Policies", [])]
        return docs, [self.eval(a) for a in props.get("ManagedPolicyArns", [])]

    def managed(self, name):
        return self.eval(self.resource(name)["Properties"]["PolicyDocument"])

    def trust(self, role):
        return self.eval(self.resource(role)["Properties"]["AssumeRolePolicyDocument"])


class _NoValue:
    pass


NOVALUE = _NoValue()


def _novalue_ref(stack_ref):
    def ref(name):
        return NOVALUE if name == "AWS::NoValue" else stack_ref(name)
    return ref


# ---------------------------------------------------------------------------------------------
# The evaluator.

def as_list(x):
    return x if isinstance(x, list) else [x]


class Unresolved(Exception):
    pass


def subst(pattern: str, ctx: dict) -> str:
    """Policy variables from the request context; one that has no value makes the statement not
    apply (IAM: "the entire statement may be invalid")."""
    def rep(m):
        key = m.group(1).lower()
        for k, v in ctx.items():
            if k.lower() == key and not isinstance(v, list):
                return v
        raise Unresolved(m.group(1))
    return re.sub(r"\$\{([^}]+)\}", rep, pattern)


def like(value: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


def ctx_get(ctx, key):
    for k, v in ctx.items():
        if k.lower() == key.lower():
            return v
    return None


def condition_holds(cond: dict, ctx: dict) -> bool:
    for op, tests in cond.items():
        for key, expected in tests.items():
            expected = [subst(str(e), ctx) for e in as_list(expected)]
            actual = ctx_get(ctx, key)
            base = op.replace("ForAllValues:", "").replace("ForAnyValue:", "")
            if base == "Null":
                if (actual is None) != (expected[0] == "true"):
                    return False
                continue
            negated = "Not" in base
            if actual is None:
                if op.startswith("ForAllValues:"):
                    continue  # vacuously true
                if negated:
                    continue  # a negated operator on a missing key matches
                return False
            values = as_list(actual)
            if base in ("StringEquals", "StringNotEquals"):
                match = lambda v: v in expected
            elif base in ("StringLike", "StringNotLike", "ArnLike", "ArnNotLike", "ArnEquals"):
                match = lambda v: any(like(v, e) for e in expected)
            else:
                raise SystemExit(f"check_team_policy: the evaluator does not know {op}")
            if op.startswith("ForAllValues:"):
                ok = all(match(v) for v in values)
            else:
                ok = any(match(v) for v in values)
            if negated:
                ok = not ok
            if not ok:
                return False
    return True


def statement_applies(st: dict, action: str, resource: str, ctx: dict, principal: str | None = None) -> bool:
    try:
        if "Principal" in st and principal is not None:
            p = st["Principal"]
            names = ["*"] if p == "*" else as_list(p.get("AWS", [])) + as_list(p.get("Service", []))
            if not any(n == "*" or like(principal, n) for n in names):
                return False
        if not any(like(action.lower(), a.lower()) for a in as_list(st["Action"])):
            return False
        if not any(like(resource, subst(r, ctx)) for r in as_list(st.get("Resource", "*"))):
            return False
        return condition_holds(st.get("Condition", {}), ctx)
    except Unresolved:
        return False


def decide(docs: list[tuple[str, dict]], action, resource, ctx, principal=None):
    """(allowed, [statement names that allowed or denied])."""
    allows, denies = [], []
    for name, doc in docs:
        for st in as_list(doc["Statement"]):
            if statement_applies(st, action, resource, ctx, principal):
                (allows if st["Effect"] == "Allow" else denies).append(f"{name}:{st.get('Sid', '?')}")
    if denies:
        return False, denies
    return bool(allows), allows


def self_test():
    doc = {"Statement": [
        {"Sid": "A", "Effect": "Allow", "Action": "ec2:Delete*", "Resource": "arn:aws:ec2:*::snapshot/*",
         "Condition": {"StringEquals": {"aws:ResourceTag/kiln:team": "${aws:PrincipalTag/kiln:team}"}}},
        {"Sid": "S", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/kiln/${aws:PrincipalTag/kiln:team}/*"},
        {"Sid": "N", "Effect": "Allow", "Action": "ec2:CreateVolume", "Resource": "*",
         "Condition": {"Null": {"aws:RequestTag/kiln:build-id": "false"}}},
        {"Sid": "D", "Effect": "Deny", "Action": "sqs:SendMessage", "Resource": "*",
         "Condition": {"ArnNotLike": {"aws:PrincipalArn": ["arn:aws:iam::1:role/a-*"]}}},
        {"Sid": "T", "Effect": "Allow", "Action": "sts:TagSession", "Resource": "*",
         "Condition": {"ForAllValues:StringEquals": {"aws:TagKeys": ["kiln:team"]}}},
    ]}
    d = [("t", doc)]
    snap = "arn:aws:ec2:us-east-1::snapshot/snap-1"
    cases = [
        (("ec2:DeleteSnapshot", snap, {"aws:PrincipalTag/kiln:team": "a", "aws:ResourceTag/kiln:team": "a"}), True),
        (("ec2:DeleteSnapshot", snap, {"aws:PrincipalTag/kiln:team": "b", "aws:ResourceTag/kiln:team": "a"}), False),
        (("ec2:DeleteSnapshot", snap, {"aws:PrincipalTag/kiln:team": "a"}), False),  # untagged
        (("ec2:DeleteSnapshot", snap, {"aws:ResourceTag/kiln:team": "a"}), False),  # no session tag
        (("s3:GetObject", "arn:aws:s3:::b/kiln/a/x", {"aws:PrincipalTag/kiln:team": "a"}), True),
        (("s3:GetObject", "arn:aws:s3:::b/kiln/a/x", {"aws:PrincipalTag/kiln:team": "b"}), False),
        (("s3:GetObject", "arn:aws:s3:::b/kiln/a/x", {}), False),  # unresolved variable
        (("ec2:CreateVolume", "v", {"aws:RequestTag/kiln:build-id": "x"}), True),
        (("ec2:CreateVolume", "v", {}), False),
        (("sqs:SendMessage", "q", {"aws:PrincipalArn": "arn:aws:iam::1:role/b-x"}), False),
        (("sts:TagSession", "r", {"aws:TagKeys": ["kiln:team"]}), True),
        (("sts:TagSession", "r", {"aws:TagKeys": ["kiln:team", "other"]}), False),
    ]
    for (action, res, ctx), want in cases:
        got, _ = decide(d, action, res, ctx)
        if got != want:
            raise SystemExit(f"check_team_policy: self-test failed: {action} {res} {ctx}: {got}, expected {want}")


# ---------------------------------------------------------------------------------------------
# parliament: condition keys that exist for the action on the statement's resources.

def lint_condition_keys(name: str, doc: dict) -> list[str]:
    try:
        from parliament import iam_definition
    except ImportError:
        return [f"{name}: parliament is missing (scripts/setup installs it)"]
    services = {s["prefix"]: s for s in iam_definition}
    problems = []
    for st in as_list(doc["Statement"]):
        if st["Effect"] != "Allow" or "Condition" not in st:
            continue
        keys = [k for tests in st["Condition"].values() for k in tests]
        for action in as_list(st["Action"]):
            svc, act = action.split(":")
            if "*" in act or svc not in services:
                continue
            privs = [p for p in services[svc]["privileges"] if p["privilege"] == act]
            if not privs:
                problems.append(f"{name}:{st.get('Sid')}: {action} is not an action")
                continue
            rtypes = privs[0]["resource_types"]
            for res in as_list(st.get("Resource", "*")):
                rtype = None
                if res != "*" and svc == "ec2":
                    rtype = res.split(":")[5].split("/")[0]
                applicable, known = set(), False
                for rt in rtypes:
                    t = rt["resource_type"].rstrip("*")
                    if t in ("", rtype) or rtype is None:
                        applicable |= set(rt["condition_keys"])
                        known = known or t == rtype
                if rtype is not None and not known:
                    continue  # the action never authorizes this resource type: the pair never arises
                for k in keys:
                    norm = re.sub(r"^(aws:(?:RequestTag|ResourceTag)|ec2:ResourceTag)/.*", r"\1/${TagKey}", k)
                    if norm.startswith("aws:") and not norm.startswith(("aws:RequestTag", "aws:ResourceTag", "aws:TagKeys")):
                        continue  # global keys
                    if k.startswith("ec2:SourceInstanceARN"):
                        continue  # global for instance-profile credentials
                    if norm not in applicable:
                        problems.append(f"{name}:{st.get('Sid')}: condition key {k} does not apply to {action} on {res}")
    return problems


# ---------------------------------------------------------------------------------------------
# The calls.

def arn(service, rest, region=REGION, account=ACCOUNT):
    return f"arn:{PARTITION}:{service}:{region}:{account}:{rest}"


def main() -> int:
    pool_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "infra/kiln.yaml")
    team_path = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "infra/kiln-team.yaml")
    self_test()

    q_default = arn("sqs", f"{POOL}-RequestQueue-X")
    q_results = arn("sqs", f"{POOL}-ResultQueue-X")
    bucket_arn = f"arn:{PARTITION}:s3:::{BUCKET}"
    builder_role = f"arn:{PARTITION}:iam::{ACCOUNT}:role/{POOL}-BuilderRole-X"
    trigger_default = f"arn:{PARTITION}:iam::{ACCOUNT}:role/{POOL}-TriggerRole-X"
    trigger_payments = f"arn:{PARTITION}:iam::{ACCOUNT}:role/{POOL}-team-payments-TriggerRole-X"
    build_policy = f"arn:{PARTITION}:iam::{ACCOUNT}:policy/{POOL}-BuildPolicy-X"
    pool_atts = {
        "RequestQueue.Arn": q_default, "RequestQueue.Ref": "https://queue/default",
        "ResultQueue.Arn": q_results, "ArtifactsBucket.Arn": bucket_arn, "ArtifactsBucket.Ref": BUCKET,
        "BuilderRole.Arn": builder_role, "TriggerRole.Arn": trigger_default,
        "BootTestSecurityGroup.GroupId": "sg-boot", "BuildPolicy.Ref": build_policy,
        "TriggerFailureQueue.Arn": arn("sqs", f"{POOL}-TriggerFailureQueue-X"),
    }
    pool = Stack(pool_path, POOL, {"Subnets": SUBNETS, "VpcId": VPC, "CodeBucket": "kiln-code",
                                  "OtherTeams": ["payments"]}, pool_atts)
    pool.ref = _novalue_ref(pool.ref)
    q_payments = arn("sqs", f"{POOL}-req-payments")
    team = Stack(team_path, f"{POOL}-team-payments", {
        "Team": "payments", "PoolStackName": POOL,
        "Principals": ["arn:aws:iam::123456789012:role/payments-ci"],
        "ArtifactsBucketName": BUCKET, "ArtifactsBucketArn": bucket_arn,
        "DeadLetterQueueArn": arn("sqs", "dlq"), "BuilderRoleArn": builder_role,
        "TriggerFailureQueueArn": arn("sqs", f"{POOL}-TriggerFailureQueue-X"),
        "BuildPolicyArn": build_policy, "BuilderGroupName": f"{POOL}-builders", "CodeBucket": "kiln-code",
    }, {"RequestQueue.Arn": q_payments, "TriggerRole.Arn": trigger_payments})
    team.ref = _novalue_ref(team.ref)

    # The policies each principal has.
    bp = [("BuildPolicy", pool.managed("BuildPolicy"))]
    default_inline, _ = pool.role_policies("DefaultBuildRole")
    roles = {
        "build:default": bp + [("DefaultBuildRole", d) for d in default_inline],
        "build:payments": bp + [("payments:BuildRole", d) for d in team.role_policies("BuildRole")[0]],
        "builder": [("BuilderRole", d) for d in pool.role_policies("BuilderRole")[0]],
        "trigger:default": [("TriggerRole", d) for d in pool.role_policies("TriggerRole")[0]],
        "trigger:payments": [("payments:TriggerRole", d) for d in team.role_policies("TriggerRole")[0]],
        "principal:default": [("DefaultTeamAccessPolicy", pool.managed("DefaultTeamAccessPolicy"))],
        "principal:payments": [("payments:TeamAccessPolicy", team.managed("TeamAccessPolicy"))],
        # A principal of the account whose own policies allow all of SQS (an administrator's CI).
        "principal:broad": [("broad", {"Statement": [{"Effect": "Allow", "Action": "sqs:*", "Resource": "*"}]})],
    }
    principal_arns = {
        "build:default": f"arn:{PARTITION}:iam::{ACCOUNT}:role/kiln-build-default",
        "build:payments": f"arn:{PARTITION}:iam::{ACCOUNT}:role/kiln-build-payments",
        "builder": builder_role, "trigger:default": trigger_default, "trigger:payments": trigger_payments,
        "principal:default": f"arn:{PARTITION}:iam::{ACCOUNT}:role/default-ci",
        "principal:payments": f"arn:{PARTITION}:iam::{ACCOUNT}:role/payments-ci",
        "principal:broad": f"arn:{PARTITION}:iam::{ACCOUNT}:role/ops",
    }
    # The tags of the roles themselves (aws:PrincipalTag for their sessions): the triggers'.
    def role_tags(stack, role):
        return {f"aws:PrincipalTag/{t['Key']}": stack.eval(t["Value"])
                for t in stack.resource(role)["Properties"].get("Tags", [])}
    principal_tags = {"trigger:default": role_tags(pool, "TriggerRole"),
                      "trigger:payments": role_tags(team, "TriggerRole")}
    # Resource policies: the queues' (the default queue has none without DefaultTeamPrincipals)
    # and the build roles' trust policies.
    resource_policies = {
        q_payments: [("payments:RequestQueuePolicy", team.eval(team.resource("RequestQueuePolicy")["Properties"]["PolicyDocument"]))],
        principal_arns["build:default"]: [("DefaultBuildRole:trust", pool.trust("DefaultBuildRole"))],
        principal_arns["build:payments"]: [("payments:BuildRole:trust", team.trust("BuildRole"))],
    }
    if pool.conds.get("HasDefaultPrincipals"):
        resource_policies[q_default] = [("DefaultQueuePolicy", pool.eval(pool.resource("DefaultQueuePolicy")["Properties"]["PolicyDocument"]))]

    # Lint: condition keys that exist, on every Allow statement of the identity policies.
    problems = []
    for who in ("build:default", "build:payments", "builder", "trigger:default", "trigger:payments"):
        for name, doc in roles[who]:
            problems += lint_condition_keys(name, doc)
    problems = sorted(set(problems))

    def ec2(kind, rid, region=REGION, account=ACCOUNT):
        if kind in ("snapshot", "image"):
            account = ""
        return f"arn:{PARTITION}:ec2:{region}:{account}:{kind}/{rid}"

    def tags(team_, **extra):
        return {"aws:ResourceTag/kiln:team": team_, "aws:ResourceTag/kiln:build-id": "b1", **extra}

    def req(team_):
        return {"aws:RequestTag/kiln:team": team_, "aws:RequestTag/kiln:build-id": "b1",
                "aws:TagKeys": ["kiln:build-id", "kiln:generation", "kiln:step", "kiln:team"]}

    calls = []  # (who, description, [(action, resource, ctx)], expected)

    def call(who, what, parts, expected):
        calls.append((who, what, parts, expected))

    for t, other in (("default", "payments"), ("payments", "default")):
        who = f"build:{t}"
        own_snap, own_vol, own_img = ec2("snapshot", f"snap-{t}"), ec2("volume", f"vol-{t}"), ec2("image", f"ami-{t}")
        oth_snap, oth_vol, oth_img = ec2("snapshot", f"snap-{other}"), ec2("volume", f"vol-{other}"), ec2("image", f"ami-{other}")
        new_vol, new_snap, new_img = ec2("volume", "vol-new"), ec2("snapshot", "snap-new"), ec2("image", "ami-new")
        new_inst = ec2("instance", "i-new")
        own = {"ec2:Owner": ACCOUNT}
        # What a build does (expected: allowed).
        call(who, "DescribeImages", [("ec2:DescribeImages", "*", {})], True)
        call(who, "CreateVolume from a listed publisher's snapshot",
             [("ec2:CreateVolume", new_vol, req(t)), ("ec2:CreateVolume", ec2("snapshot", "snap-pub"), {"ec2:Owner": PUBLIC_OWNER})], True)
        call(who, "CreateVolume from Amazon's snapshot",
             [("ec2:CreateVolume", new_vol, req(t)), ("ec2:CreateVolume", ec2("snapshot", "snap-amzn"), {"ec2:Owner": "amazon"})], True)
        call(who, "CreateVolume from its team's snapshot",
             [("ec2:CreateVolume", new_vol, req(t)), ("ec2:CreateVolume", own_snap, {**tags(t), **own})], True)
        call(who, "CreateVolume from the account's untagged snapshot",
             [("ec2:CreateVolume", new_vol, req(t)), ("ec2:CreateVolume", ec2("snapshot", "snap-base"), own)], True)
        call(who, "CreateTags at CreateVolume", [("ec2:CreateTags", new_vol, {**req(t), "ec2:CreateAction": "CreateVolume"})], True)
        call(who, "AttachVolume its volume to its own instance",
             [("ec2:AttachVolume", ec2("instance", SELF), {}), ("ec2:AttachVolume", own_vol, tags(t))], True)
        call(who, "DetachVolume its volume from its own instance",
             [("ec2:DetachVolume", ec2("instance", SELF), {}), ("ec2:DetachVolume", own_vol, tags(t))], True)
        call(who, "CreateSnapshot of its volume",
             [("ec2:CreateSnapshot", new_snap, req(t)), ("ec2:CreateSnapshot", own_vol, tags(t))], True)
        call(who, "RegisterImage of its snapshot",
             [("ec2:RegisterImage", new_img, req(t)), ("ec2:RegisterImage", own_snap, {**tags(t), **own})], True)
        call(who, "CopyImage of its AMI (image and snapshots tagged)",
             [("ec2:CopyImage", new_img, req(t)), ("ec2:CopyImage", ec2("snapshot", "snap-copy"), req(t))], True)
        call(who, "ModifyImageAttribute (share) its AMI", [("ec2:ModifyImageAttribute", own_img, tags(t))], True)
        call(who, "ModifySnapshotAttribute its snapshot", [("ec2:ModifySnapshotAttribute", own_snap, tags(t))], True)
        call(who, "DeregisterImage its AMI (force_deregister)", [("ec2:DeregisterImage", own_img, tags(t))], True)
        call(who, "DeleteSnapshot its snapshot", [("ec2:DeleteSnapshot", own_snap, tags(t))], True)
        call(who, "DeleteVolume its volume", [("ec2:DeleteVolume", own_vol, tags(t))], True)
        boot = [("ec2:RunInstances", new_inst, {**req(t), "ec2:InstanceType": "t3.micro"}),
                ("ec2:RunInstances", ec2("volume", "vol-boot"), req(t)),
                ("ec2:RunInstances", own_img, {**tags(t), **own}),
                ("ec2:RunInstances", own_snap, {**tags(t), **own}),
                ("ec2:RunInstances", ec2("subnet", SUBNETS[0]), {"ec2:SubnetID": SUBNETS[0]}),
                ("ec2:RunInstances", ec2("security-group", "sg-boot"), {}),
                ("ec2:RunInstances", ec2("network-interface", "*"), {"ec2:Vpc": ec2("vpc", VPC)})]
        call(who, "RunInstances (boot test) of its AMI", boot, True)
        call(who, "GetConsoleOutput of its boot-test instance", [("ec2:GetConsoleOutput", ec2("instance", "i-boot"), tags(t))], True)
        call(who, "TerminateInstances its boot-test instance", [("ec2:TerminateInstances", ec2("instance", "i-boot"), tags(t))], True)
        sec = "kiln/x" if t == "default" else f"kiln/{t}/x"
        par = "/kiln/x" if t == "default" else f"/kiln/{t}/x"
        call(who, f"GetSecretValue {sec}", [("secretsmanager:GetSecretValue", arn("secretsmanager", f"secret:{sec}-AbCdEf"), {})], True)
        call(who, f"DescribeSecret {sec}", [("secretsmanager:DescribeSecret", arn("secretsmanager", f"secret:{sec}-AbCdEf"), {})], True)
        call(who, f"GetParameter {par}", [("ssm:GetParameter", arn("ssm", f"parameter{par}"), {})], True)
        call(who, "GetParameters /aws/service/ami-amazon-linux-latest/...",
             [("ssm:GetParameters", arn("ssm", "parameter/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64", account=""), {})], True)
        # Cross-team attempts (expected: denied).
        call(who, f"CreateVolume from {other}'s snapshot",
             [("ec2:CreateVolume", new_vol, req(t)), ("ec2:CreateVolume", oth_snap, {**tags(other), **own})], False)
        call(who, "CreateVolume from an unlisted account's snapshot",
             [("ec2:CreateVolume", new_vol, req(t)), ("ec2:CreateVolume", ec2("snapshot", "snap-x"), {"ec2:Owner": UNLISTED_OWNER})], False)
        call(who, f"CreateVolume tagged as {other}'s",
             [("ec2:CreateVolume", new_vol, req(other)), ("ec2:CreateVolume", own_snap, {**tags(t), **own})], False)
        call(who, "CreateVolume without a build id", [("ec2:CreateVolume", new_vol, {"aws:RequestTag/kiln:team": t})], False)
        call(who, f"CreateTags kiln:team={t} on {other}'s volume (not at creation)",
             [("ec2:CreateTags", oth_vol, {"aws:RequestTag/kiln:team": t, **tags(other)})], False)
        call(who, f"CreateSnapshot of {other}'s volume",
             [("ec2:CreateSnapshot", new_snap, req(t)), ("ec2:CreateSnapshot", oth_vol, tags(other))], False)
        call(who, f"RegisterImage of {other}'s snapshot",
             [("ec2:RegisterImage", new_img, req(t)), ("ec2:RegisterImage", oth_snap, {**tags(other), **own})], False)
        call(who, f"DeregisterImage {other}'s AMI (force_deregister)", [("ec2:DeregisterImage", oth_img, tags(other))], False)
        call(who, f"ModifyImageAttribute (share) {other}'s AMI", [("ec2:ModifyImageAttribute", oth_img, tags(other))], False)
        call(who, f"ModifySnapshotAttribute (share) {other}'s snapshot", [("ec2:ModifySnapshotAttribute", oth_snap, tags(other))], False)
        call(who, f"DeleteSnapshot {other}'s snapshot", [("ec2:DeleteSnapshot", oth_snap, tags(other))], False)
        call(who, f"DeleteVolume {other}'s volume", [("ec2:DeleteVolume", oth_vol, tags(other))], False)
        call(who, "DeregisterImage an AMI kiln did not make", [("ec2:DeregisterImage", ec2("image", "ami-ops"), {})], False)
        call(who, f"AttachVolume {other}'s volume to its own instance",
             [("ec2:AttachVolume", ec2("instance", SELF), {}), ("ec2:AttachVolume", oth_vol, tags(other))], False)
        call(who, "AttachVolume its volume to another instance",
             [("ec2:AttachVolume", ec2("instance", OTHER_INSTANCE), {}), ("ec2:AttachVolume", own_vol, tags(t))], False)
        call(who, f"TerminateInstances {other}'s instance", [("ec2:TerminateInstances", ec2("instance", "i-x"), tags(other))], False)
        call(who, f"RunInstances of {other}'s AMI",
             [(a, r, c) if r != own_img else (a, oth_img, {**tags(other), **own}) for a, r, c in boot], False)
        call(who, "RunInstances of a type not allowed",
             [(a, r, {**c, "ec2:InstanceType": "p5.48xlarge"}) if r == new_inst else (a, r, c) for a, r, c in boot], False)
        call(who, "RunInstances in a subnet outside the pool",
             [(a, ec2("subnet", "subnet-zz"), {"ec2:SubnetID": "subnet-zz"}) if "subnet/" in r else (a, r, c) for a, r, c in boot], False)
        call(who, "RunInstances in another security group",
             [(a, ec2("security-group", "sg-open"), c) if "security-group/" in r else (a, r, c) for a, r, c in boot], False)
        osec = f"kiln/{other}/x" if other != "default" else "kiln/x"
        opar = f"/kiln/{other}/x" if other != "default" else "/kiln/x"
        call(who, f"GetSecretValue {osec}", [("secretsmanager:GetSecretValue", arn("secretsmanager", f"secret:{osec}-AbCdEf"), {})], False)
        call(who, f"GetParameter {opar}", [("ssm:GetParameter", arn("ssm", f"parameter{opar}"), {})], False)

    # The builders' role: every team's documents and queue, and its build role only as its team.
    for t, root, q in (("default", "", q_default), ("payments", "teams/payments/", q_payments)):
        for a, key in (("s3:GetObject", f"{root}templates/app/app.pkr.hcl"), ("s3:GetObject", f"{root}submissions/b1/app.pkr.hcl"),
                       ("s3:PutObject", f"{root}results/b1.json"), ("s3:PutObject", f"{root}logs/b1.log"),
                       ("s3:PutObject", f"{root}checkpoints/b1.json"), ("s3:GetObject", f"{root}checkpoints/b1.json"),
                       ("s3:PutObject", f"{root}index/templates/app.json"), ("s3:DeleteObject", f"{root}checkpoints/b1.json")):
            call("builder", f"{a} {key}", [(a, f"{bucket_arn}/{key}", {})], True)
        call("builder", f"ListBucket prefix {root}templates/app/", [("s3:ListBucket", bucket_arn, {"s3:prefix": f"{root}templates/app/"})], True)
        for a in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes"):
            call("builder", f"{a} {t}'s queue", [(a, q, {})], True)
        sess = {"aws:RequestTag/kiln:team": t, "aws:RequestTag/kiln:instance": SELF,
                "aws:TagKeys": ["kiln:team", "kiln:instance"], "ec2:SourceInstanceARN": ec2("instance", SELF)}
        call("builder", f"AssumeRole+TagSession kiln-build-{t} as {t}",
             [("sts:AssumeRole", principal_arns[f"build:{t}"], sess), ("sts:TagSession", principal_arns[f"build:{t}"], sess)], True)
        other = "payments" if t == "default" else "default"
        bad = {**sess, "aws:RequestTag/kiln:team": other}
        call("builder", f"AssumeRole kiln-build-{t} as {other}",
             [("sts:AssumeRole", principal_arns[f"build:{t}"], bad), ("sts:TagSession", principal_arns[f"build:{t}"], bad)], False)
        lie = {**sess, "aws:RequestTag/kiln:instance": OTHER_INSTANCE}
        call("builder", f"AssumeRole kiln-build-{t} naming another instance",
             [("sts:AssumeRole", principal_arns[f"build:{t}"], lie), ("sts:TagSession", principal_arns[f"build:{t}"], lie)], False)
    call("builder", "SendMessage result queue", [("sqs:SendMessage", q_results, {})], True)
    call("builder", "GetObject config/worker-teams.toml", [("s3:GetObject", f"{bucket_arn}/config/worker-teams.toml", {})], True)
    call("builder", "ListBucket without a prefix", [("s3:ListBucket", bucket_arn, {})], False)
    call("builder", "CreateVolume with its own credentials",
         [("ec2:CreateVolume", ec2("volume", "vol-new"), req("default"))], False)

    # The teams' principals and triggers.
    for t, root, q in (("default", "", q_default), ("payments", "teams/payments/", q_payments)):
        other, oroot, oq = (("payments", "teams/payments/", q_payments) if t == "default" else ("default", "", q_default))
        p = f"principal:{t}"
        call(p, f"SendMessage {t}'s queue", [("sqs:SendMessage", q, {})], True)
        call(p, f"PutObject {root}templates/app.pkr.hcl", [("s3:PutObject", f"{bucket_arn}/{root}templates/app.pkr.hcl", {})], True)
        call(p, f"PutObject {root}submissions/b1/app.pkr.hcl", [("s3:PutObject", f"{bucket_arn}/{root}submissions/b1/app.pkr.hcl", {})], True)
        call(p, f"GetObject {root}results/b1.json", [("s3:GetObject", f"{bucket_arn}/{root}results/b1.json", {})], True)
        call(p, f"ListBucket prefix {root}results/", [("s3:ListBucket", bucket_arn, {"s3:prefix": f"{root}results/"})], True)
        call(p, f"SendMessage {other}'s queue", [("sqs:SendMessage", oq, {})], False)
        for a, key in (("s3:GetObject", f"{oroot}results/b1.json"), ("s3:PutObject", f"{oroot}results/b1.json"),
                       ("s3:GetObject", f"{oroot}logs/b1.log"), ("s3:PutObject", f"{oroot}templates/app.pkr.hcl"),
                       ("s3:PutObject", f"{oroot}index/templates/app.json"), ("s3:DeleteObject", f"{oroot}checkpoints/b1.json")):
            call(p, f"{a} {key}", [(a, f"{bucket_arn}/{key}", {})], False)
        call(p, f"PutObject {root}results/b1.json (forging its own result)", [("s3:PutObject", f"{bucket_arn}/{root}results/b1.json", {})], False)
        call(p, f"ListBucket prefix {oroot or 'results/'}", [("s3:ListBucket", bucket_arn, {"s3:prefix": oroot or "results/"})], False)
        tr = f"trigger:{t}"
        call(tr, f"SendMessage {t}'s queue", [("sqs:SendMessage", q, {})], True)
        call(tr, f"GetObject {root}templates/app.pkr.hcl", [("s3:GetObject", f"{bucket_arn}/{root}templates/app.pkr.hcl", {})], True)
        call(tr, f"GetObject {root}index/templates/app.pkr.hcl.json", [("s3:GetObject", f"{bucket_arn}/{root}index/templates/app.pkr.hcl.json", {})], True)
        call(tr, f"ListBucket prefix {root}templates/", [("s3:ListBucket", bucket_arn, {"s3:prefix": f"{root}templates/"})], True)
        call(tr, "DescribeImages", [("ec2:DescribeImages", "*", {})], True)
        call(tr, f"GetObject {root}results/nightly-x.json (the nightly retry)", [("s3:GetObject", f"{bucket_arn}/{root}results/nightly-x.json", {})], True)
        call(tr, f"GetObject {root}results/b1.json (not a nightly build)", [("s3:GetObject", f"{bucket_arn}/{root}results/b1.json", {})], False)
        call(tr, f"GetObject {oroot}results/nightly-x.json", [("s3:GetObject", f"{bucket_arn}/{oroot}results/nightly-x.json", {})], False)
        call(tr, f"PutObject {root}index/.nightly-cursor", [("s3:PutObject", f"{bucket_arn}/{root}index/.nightly-cursor", {})], True)
        call(tr, f"PutObject {root}index/templates/app.pkr.hcl.json (forging the bake index)", [("s3:PutObject", f"{bucket_arn}/{root}index/templates/app.pkr.hcl.json", {})], False)
        call(tr, f"PutObject {oroot}index/.nightly-cursor", [("s3:PutObject", f"{bucket_arn}/{oroot}index/.nightly-cursor", {})], False)
        call(tr, "SendMessage the trigger failure queue", [("sqs:SendMessage", arn("sqs", f"{POOL}-TriggerFailureQueue-X"), {})], True)
        logs = f"/aws/lambda/{POOL}-trigger" + ("" if t == "default" else f"-{t}")
        call(tr, f"PutLogEvents {logs}", [("logs:PutLogEvents", arn("logs", f"log-group:{logs}:log-stream:s"), {})], True)
        call(tr, "PutLogEvents another log group", [("logs:PutLogEvents", arn("logs", "log-group:/aws/lambda/other:log-stream:s"), {})], False)
        call(tr, f"SendMessage {other}'s queue", [("sqs:SendMessage", oq, {})], False)
        call(tr, f"GetObject {oroot}templates/app.pkr.hcl", [("s3:GetObject", f"{bucket_arn}/{oroot}templates/app.pkr.hcl", {})], False)
        # Lifecycle rules: the team's own images and snapshots, the team's channels' history.
        for a, kind, rid in (("ec2:EnableImageDeprecation", "image", "ami-old"), ("ec2:DeregisterImage", "image", "ami-old"),
                             ("ec2:DeleteSnapshot", "snapshot", "snap-old")):
            call(tr, f"{a} {t}'s {kind} (lifecycle)", [(a, ec2(kind, rid, region="eu-west-1"), tags(t))], True)
            call(tr, f"{a} {other}'s {kind} (lifecycle)", [(a, ec2(kind, rid), tags(other))], False)
            call(tr, f"{a} a {kind} kiln did not make", [(a, ec2(kind, rid), {})], False)
        call(tr, f"GetParameterHistory /kiln/{t}/web/prod", [("ssm:GetParameterHistory", arn("ssm", f"parameter/kiln/{t}/web/prod"), {})], True)
        call(tr, f"GetParameterHistory /kiln/{other}/web/prod", [("ssm:GetParameterHistory", arn("ssm", f"parameter/kiln/{other}/web/prod"), {})], False)
        # The paths the lifecycle lists: a template's channels, and every channel of the team.
        for path in (f"kiln/{t}/web", f"kiln/{t}/"):
            call(tr, f"GetParametersByPath /{path}", [("ssm:GetParametersByPath", arn("ssm", f"parameter/{path}"), {})], True)
        for path in (f"kiln/{other}/web", f"kiln/{other}/"):
            call(tr, f"GetParametersByPath /{path}", [("ssm:GetParametersByPath", arn("ssm", f"parameter/{path}"), {})], False)
        osec = f"kiln/{other}/x" if other != "default" else "kiln/x"
        call(tr, f"GetSecretValue {osec}", [("secretsmanager:GetSecretValue", arn("secretsmanager", f"secret:{osec}-AbCdEf"), {})], False)
    call("principal:broad", "SendMessage payments' queue (identity policy allows sqs:*)", [("sqs:SendMessage", q_payments, {})], False)

    # Evaluate.
    rows, mismatches = [], 0
    for who, what, parts, expected in calls:
        outcome, why = True, []
        for action, resource, ctx in parts:
            pctx = dict(ctx)
            pctx["aws:PrincipalArn"] = principal_arns[who]
            if who.startswith("build:"):
                pctx["aws:PrincipalTag/kiln:team"] = who.split(":")[1]
                pctx["aws:PrincipalTag/kiln:instance"] = SELF
            pctx.update(principal_tags.get(who, {}))
            ok, sids = decide(roles[who], action, resource, pctx)
            rp = resource_policies.get(resource)
            if rp:
                rok, rsids = decide(rp, action, resource, pctx, principal=principal_arns[who])
                denied = [s for s in rsids if not rok]
                if not rok and denied:
                    ok, sids = False, denied
                elif rok:
                    if action.startswith("sts:"):
                        ok, sids = ok and rok, sids + rsids  # a role's trust policy must allow too
                    else:
                        ok, sids = True, sids + rsids
                elif action.startswith("sts:"):
                    ok, sids = False, [f"{rp[0][0]}: no statement allows (the role's trust policy)"]
            if not ok:
                outcome = False
                why = [f"{action} on {resource}: " + (", ".join(sids) if sids else "no statement allows")]
                break
            why.extend(sids)
        good = outcome == expected
        mismatches += not good
        rows.append((who, what, "allowed" if outcome else "denied", "" if good else "  <-- MISMATCH",
                     ", ".join(dict.fromkeys(why))))
    w1 = max(len(r[0]) for r in rows)
    w2 = max(len(r[1]) for r in rows)
    for who, what, res, bad, why in rows:
        print(f"{who:<{w1}}  {what:<{w2}}  {res:<7}{bad}  {why}")
    for p in problems:
        print(f"condition key: {p}")
    allowed = sum(r[2] == "allowed" for r in rows)
    print(f"check_team_policy: {len(rows)} calls, {allowed} allowed, {len(rows) - allowed} denied, "
          f"{mismatches} not as expected, {len(problems)} condition-key problem(s)")
    return 1 if mismatches or problems else 0


if __name__ == "__main__":
    sys.exit(main())
