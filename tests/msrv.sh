#!/usr/bin/env bash
# Toolchain truth: `rust-version` in Cargo.toml must be what building patchbay really needs. Checks,
# from `cargo metadata` (the locked dependencies built on this platform: normal, build and dev):
#   1. every workspace member declares the same rust-version as patchbay;
#   2. no locked dependency declares a higher rust-version than ours (a higher one means ours is
#      a false promise: raise it to the highest, which this script prints);
#   3. the toolchain in use (rust-toolchain.toml) is not older than ours.
# Prints `msrv: N passed, M failed`; exits non-zero on a failure. Needs cargo and python3, no
# network.
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
cargo metadata --format-version 1 --locked --filter-platform "$host" >"${TMPDIR:-/tmp}/patchbay-metadata.$$.json"
trap 'rm -f "${TMPDIR:-/tmp}/patchbay-metadata.$$.json"' EXIT
python3 - "${TMPDIR:-/tmp}/patchbay-metadata.$$.json" "$(rustc -vV | sed -n 's/^release: //p')" <<'PY'
import json, sys

meta = json.load(open(sys.argv[1]))
toolchain = sys.argv[2]
packages = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
members = set(meta["workspace_members"])


def version(v):
    parts = [int(x) for x in v.split("-")[0].split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def show(v):
    return ".".join(map(str, v))


# What gets built: from the workspace members through normal, build and (for members) dev edges.
built, todo = set(), list(members)
while todo:
    pid = todo.pop()
    if pid in built:
        continue
    built.add(pid)
    for dep in nodes[pid]["deps"]:
        kinds = {k["kind"] for k in dep["dep_kinds"]}
        if pid in members or kinds & {None, "build"}:
            todo.append(dep["pkg"])

ours_pkg = next(packages[m] for m in members if packages[m]["name"] == "patchbay")
ours = version(ours_pkg["rust_version"])
passed = failed = 0


def check(ok, name, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok: {name}")
    else:
        failed += 1
        print(f"FAILED: {name}{': ' + detail if detail else ''}")


odd = sorted(f'{packages[m]["name"]} {packages[m].get("rust_version")}' for m in members
             if packages[m].get("rust_version") != ours_pkg["rust_version"])
check(not odd, f"every workspace member declares rust-version {show(ours)}", ", ".join(odd))

declared = sorted(((version(packages[p]["rust_version"]), packages[p]["name"], packages[p]["version"])
                   for p in built - members if packages[p].get("rust_version")), reverse=True)
highest = declared[0][0] if declared else (0, 0, 0)
above = [f"{n} {v} needs {show(rv)}" for rv, n, v in declared if rv > ours]
check(not above, f"no locked dependency needs more than {show(ours)} "
      f"({len(declared)} of {len(built - members)} built dependencies declare one; highest {show(highest)})",
      "; ".join(above))
check(version(toolchain) >= ours, f"toolchain {toolchain} is not older than rust-version {show(ours)}")
if highest < ours:
    print(f"note: rust-version {show(ours)} is above every dependency's ({show(highest)}): "
          "fine if our own code needs it, otherwise lower it")
print(f"msrv: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
