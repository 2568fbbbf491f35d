"""Vendors the crates the kvstore image build compiles, for a build without network.

    python3 images/vendor.py DIR     vendor into DIR
    python3 images/vendor.py --key   print a digest of what DIR would hold

`cargo vendor` copies every package in Cargo.lock, for every platform (Windows crates
alone are hundreds of MB). The image build compiles only kvstore's normal and build
dependencies for x86_64 Linux, but cargo still reads every locked package's manifest to
load the workspace. So each package outside that set is cut down to a stub: its
Cargo.toml and a checksum file that lists no files (cargo then checks none), with empty
source files where its manifest names targets. A stub is never compiled.
"""
import hashlib
import json
import pathlib
import shutil
import subprocess
import sys
import tomllib

TARGET = "x86_64-unknown-linux-gnu"
PACKAGE = "kvstore"


def cargo(*args):
    return subprocess.run(["cargo", *args], check=True, capture_output=True, text=True).stdout


def compiled_packages():
    """(name, version) of each package `cargo build -p kvstore` compiles for TARGET,
    as cargo's feature resolver decides (cargo metadata would count optional ones too)."""
    tree = cargo("tree", "--locked", "-p", PACKAGE, "-e", "normal,build", "--target", TARGET,
                 "--prefix", "none", "--format", "{p}")
    # Registry packages only: a workspace member's line also names its local path.
    return {tuple(line.split()[:2]) for line in tree.splitlines() if line.strip() and "(/" not in line}


def key():
    """Changes when the vendored crates would: with Cargo.lock or the compiled set."""
    lock = (pathlib.Path(__file__).resolve().parent.parent / "Cargo.lock").read_bytes()
    compiled = "\n".join(" ".join(p) for p in sorted(compiled_packages())).encode()
    return hashlib.sha256(lock + b"\0" + compiled).hexdigest()[:12]


def stub(crate):
    """Replaces a vendored crate by its manifest, with empty target sources."""
    manifest = tomllib.loads((crate / "Cargo.toml").read_text())
    checksum = json.loads((crate / ".cargo-checksum.json").read_text())["package"]
    keep = (crate / "Cargo.toml").read_bytes()
    shutil.rmtree(crate)
    crate.mkdir()
    (crate / "Cargo.toml").write_bytes(keep)
    (crate / ".cargo-checksum.json").write_text(json.dumps({"files": {}, "package": checksum}))
    # A dependency always has a library; other targets only where the manifest names them.
    paths = [manifest.get("lib", {}).get("path", "src/lib.rs")]
    paths += [t["path"] for kind in ("bin", "example", "test", "bench")
              for t in manifest.get(kind, []) if "path" in t]
    build = manifest.get("package", {}).get("build")
    if isinstance(build, str):
        paths.append(build)
    for path in paths:
        (crate / path).parent.mkdir(parents=True, exist_ok=True)
        (crate / path).touch()


def main():
    if sys.argv[1] == "--key":
        print(key())
        return
    out = pathlib.Path(sys.argv[1]).resolve()
    if out.exists():
        shutil.rmtree(out)
    subprocess.run(["cargo", "vendor", "--locked", "--quiet", str(out)], check=True, stdout=subprocess.DEVNULL)
    keep = compiled_packages()
    stubbed = 0
    for crate in sorted(out.iterdir()):
        package = tomllib.loads((crate / "Cargo.toml").read_text())["package"]
        if (package["name"], "v" + package["version"]) not in keep:
            stub(crate)
            stubbed += 1
    print(f"vendored {len(keep)} crates into {out}, {stubbed} more as manifest-only stubs", file=sys.stderr)


if __name__ == "__main__":
    main()
