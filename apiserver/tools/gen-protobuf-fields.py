#!/usr/bin/env python3
"""Generates apiserver/src/protobuf_fields.txt: the wire layout of Kubernetes' protobuf messages
(field number, wire kind, Rust field name, message type) from the prost structs of the k8s-pb
crate, so the apiserver can decode `application/vnd.kubernetes.protobuf` bodies of every
built-in kind into Kubernetes JSON without one hand-written converter per type.

Usage: tools/gen-protobuf-fields.py ~/.cargo/registry/src/*/k8s-pb-0.9.0/src > src/protobuf_fields.txt
"""
import os
import re
import sys

root = sys.argv[1]
KEEP = re.compile(r"^(api/[a-z]+/v[0-9]+|apimachinery/pkg/(apis/meta/v1|util/intstr|api/resource|runtime))$")
ATTR = re.compile(r'#\[prost\((.*)\)\]')
out = []
for dirpath, _, files in sorted(os.walk(root)):
    rel = os.path.relpath(dirpath, root)
    if not KEEP.match(rel) or "mod.rs" not in files:
        continue
    mod = rel.split("/")
    pkg = "io.k8s." + ".".join(mod)
    text = open(os.path.join(dirpath, "mod.rs")).read()
    for m in re.finditer(r"^pub struct (\w+) \{\n(.*?)^\}", text, re.S | re.M):
        name, body = m.group(1), m.group(2)
        out.append(f"M {pkg}.{name}")
        lines = [l.strip() for l in body.split("\n") if not l.strip().startswith("///")]
        joined = " ".join(lines)
        for f in re.finditer(r'#\[prost\(([^\]]*)\)\]\s*pub (r#)?(\w+):\s*([^,]*(?:<[^>]*>)?[^,]*),', joined):
            attr, field, ty = f.group(1), f.group(3), f.group(4)
            tag = re.search(r'tag = "(\d+)"', attr).group(1)
            mapm = re.match(r'\s*(?:btree_)?map = "([^"]*)"', attr)
            kind = "map = " + mapm.group(0) if mapm else attr.split(",")[0].strip()
            repeated = "repeated" in attr
            msg = "-"
            if mapm:
                kv = mapm.group(1).replace(" ", "")
                kind = "map:" + kv
                if kv.endswith("message"):
                    inner = re.compile(r"BTreeMap<\s*[^,]*,\s*([\w:]+)\s*,?\s*>").search(joined, f.start())
                    msg = inner.group(1) if inner else "?"
            elif kind == "bytes = \"vec\"":
                kind = "bytes"
            elif kind == "message":
                inner = re.search(r"(?:Option|Vec|Box)<\s*(?:::prost::alloc::boxed::Box<)?\s*([\w:]+)", ty)
                msg = inner.group(1) if inner else ty
            if msg not in ("-", "?"):
                parts = msg.split("::")
                base = list(mod)
                while parts and parts[0] == "super":
                    parts.pop(0)
                    base.pop()
                msg = "io.k8s." + ".".join(base + parts)
            out.append(f"F {tag} {field} {kind} {'r' if repeated else 's'} {msg}")
print("\n".join(out))
