#!/usr/bin/env python3
"""Generates the machine-readable `debian/copyright` (DEP-5) and the Yocto recipe's
`LICENSE` and `LIC_FILES_CHKSUM` from the crates linked into the `kp-gateway` binary (Cargo.lock, normal
dependencies of the target platforms, proc-macro crates left out: they run at build time
and are not in the binary).

Usage: packaging/gen-copyright.py          (writes both files)
       packaging/gen-copyright.py --check  (exits 1 when either is stale; CI runs this)
"""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPYRIGHT = ROOT / "debian/copyright"
YOCTO_INC = ROOT / "yocto/meta-kp-gateway/recipes-connectivity/kp-gateway/kp-gateway-licenses.inc"
TEXTS = ROOT / "packaging/licenses"
# Licenses a Debian system ships in /usr/share/common-licenses (referenced, not copied).
COMMON = {"Apache-2.0": "Apache-2.0", "MPL-2.0": "MPL-2.0", "GPL-3.0-only": "GPL-3"}
# oe-core's meta/files/common-licenses, for the few crates whose archive has no license
# file of its own (their md5 sums: those texts have not changed in years).
OE_COMMON_MD5 = {"Apache-2.0": "89aea4e17d99a7cacdbeed46a0096b10", "MIT": "0835ade698e0bcf8506ecda2f7b4f302"}
LICENSE_FILE = re.compile(r"^(LICEN[CS]E|COPYING|UNLICENSE|COPYRIGHT)([-_.].*)?$", re.I)
TARGETS = ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu", "armv7-unknown-linux-gnueabihf"]


def crates():
    """{(name, version): (license expression, authors)} linked into the binary."""
    out = {}
    for target in TARGETS:
        meta = json.loads(subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", target],
            cwd=ROOT, check=True, capture_output=True, text=True).stdout)
        packages = {p["id"]: p for p in meta["packages"]}
        nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
        root = next(p["id"] for p in meta["packages"] if p["name"] == "kp-gateway")
        seen, stack = set(), [root]
        while stack:
            i = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            for d in nodes[i]["deps"]:
                if not any(k["kind"] is None for k in d["dep_kinds"]):
                    continue  # dev or build dependency
                p = packages[d["pkg"]]
                if any("proc-macro" in t["kind"] for t in p["targets"]):
                    continue
                stack.append(d["pkg"])
        for i in seen:
            p = packages[i]
            if p["source"] is None:
                continue  # this workspace: Apache-2.0, covered by `Files: *`
            if not p["license"]:
                sys.exit(f"{p['name']} {p['version']} declares no SPDX license")
            out[(p["name"], p["version"])] = (p["license"], p["authors"], os.path.dirname(p["manifest_path"]))
    return out


def license_files(name: str, version: str, expr: str, src: str) -> list:
    """LIC_FILES_CHKSUM entries of one crate: its archive's license files where BitBake's
    crate fetcher unpacks it, else oe-core's text of each license it names."""
    found = sorted(f for f in os.listdir(src) if LICENSE_FILE.match(f) and os.path.isfile(os.path.join(src, f)))
    if found:
        return [f"file://${{CARGO_VENDORING_DIRECTORY}}/{name}-{version}/{f};"
                f"md5={hashlib.md5(open(os.path.join(src, f), 'rb').read()).hexdigest()}" for f in found]
    out = []
    for lic in sorted(names(expr) - {"OR", "AND", "WITH"}):
        if lic not in OE_COMMON_MD5:
            sys.exit(f"{name} {version} ships no license file and {lic} has no known common-licenses sum")
        out.append(f"file://${{COMMON_LICENSE_DIR}}/{lic};md5={OE_COMMON_MD5[lic]}")
    return out


def dep5(expr: str) -> str:
    """An SPDX expression as DEP-5 writes it (`or`, `and`, `with`)."""
    expr = expr.replace("/", " OR ")
    return re.sub(r"\b(OR|AND|WITH)\b", lambda m: m.group(1).lower(), expr)


def oe_expression(expr: str) -> str:
    """An SPDX expression as BitBake's LICENSE takes it (SPDX operators, parenthesised)."""
    e = expr.replace("/", " OR ")
    return f"({e})" if (" OR " in e or " AND " in e) else e


def names(expr: str) -> set:
    return {n for n in re.split(r"[\s()/]+|\bOR\b|\bAND\b|\bWITH\b", expr) if n}


def license_paragraph(name: str) -> str:
    if name in COMMON:
        return (f"License: {name}\n On Debian systems the full text is in"
                f" /usr/share/common-licenses/{COMMON[name]}.\n")
    text = TEXTS / name
    if not text.exists():
        sys.exit(f"no license text for {name}: add packaging/licenses/{name}")
    body = "\n".join(" " + (line if line.strip() else ".") for line in text.read_text().rstrip().splitlines())
    return f"License: {name}\n{body}\n"


def render(all_crates) -> tuple:
    used = {"Apache-2.0"}
    lines = []
    for (name, version), (expr, authors, _) in sorted(all_crates.items()):
        used |= names(expr)
        who = ", ".join(a.split(" <")[0] for a in authors) or "its authors"
        lines.append(f" {name} {version}: {dep5(expr)} (copyright {who})")
    header = (
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        "Upstream-Name: kp-gateway\n"
        "Upstream-Contact: kp-gateway developers\n"
        "Comment: Generated by packaging/gen-copyright.py from Cargo.lock; do not edit.\n"
        " The kp-gateway binary statically links the Rust crates listed below, each under\n"
        " its own license (an SPDX expression: for \"or\", the distributor may choose).\n"
        " .\n" + "\n".join(lines) + "\n"
        "\n"
        "Files: *\n"
        "Copyright: 2026 kp-gateway developers\n"
        "License: Apache-2.0\n"
    )
    paragraphs = [license_paragraph(n) for n in sorted(used)]
    copyright_text = header + "\n" + "\n".join(paragraphs)
    # Yocto: one term per distinct crate expression, choices kept as "|" (so
    # INCOMPATIBLE_LICENSE can take the permissive branch), joined with "&".
    terms = {"Apache-2.0"}
    checksums, bare = [], []
    for (name, version), (expr, _, src) in sorted(all_crates.items()):
        terms.add(oe_expression(expr))
        files = license_files(name, version, expr, src)
        if all("COMMON_LICENSE_DIR" in f for f in files):
            bare.append(name)
        checksums += files
    checksums = list(dict.fromkeys(checksums))
    inc = (
        "# Generated by packaging/gen-copyright.py from Cargo.lock; do not edit.\n"
        "# kp-gateway (Apache-2.0) and every crate linked into its binary, each with its own\n"
        "# expression (OR: a choice). The texts are in the package's copyright file.\n"
        f'LICENSE = "{" AND ".join(sorted(terms))}"\n'
        "# Each crate's license files as BitBake's crate fetcher unpacks them (the recipe's\n"
        "# own LICENSE is set in the recipe). Crates whose archive has no license file\n"
        f"# ({', '.join(bare) or 'none'}): oe-core's text of the license they declare.\n"
        "# nooelint: oelint.var.licenseremotefile - crates without a license file of their own\n"
        f'LIC_FILES_CHKSUM += "{checksums[0]} \\\n'
        + "".join(f"    {c} \\\n" for c in checksums[1:]) + '"\n'
    )
    return copyright_text, inc


def main():
    copyright_text, inc = render(crates())
    if "--check" in sys.argv:
        stale = [str(p.relative_to(ROOT)) for p, t in [(COPYRIGHT, copyright_text), (YOCTO_INC, inc)]
                 if not p.exists() or p.read_text() != t]
        if stale:
            print(f"stale: {', '.join(stale)}: run packaging/gen-copyright.py", file=sys.stderr)
            sys.exit(1)
        print("copyright and recipe LICENSE are current")
        return
    COPYRIGHT.write_text(copyright_text)
    YOCTO_INC.write_text(inc)
    print(f"wrote {COPYRIGHT.relative_to(ROOT)} and {YOCTO_INC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
