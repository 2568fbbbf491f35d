"""Checks that the root Dockerfile copies every workspace member, run before each image
build (images/build.sh kvstore, so `make test`). Cargo loads the whole workspace even to
build one package: a member the image lacks stops the build at once, and one whose
manifest is copied but not its sources builds against the placeholders. So each member
must be copied twice: its Cargo.toml for the dependency layer, then the whole folder.

    python3 images/check_context.py [DOCKERFILE]
"""
import json
import pathlib
import shlex
import subprocess
import sys

root = pathlib.Path(__file__).resolve().parent.parent
dockerfile = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else root / "Dockerfile"

metadata = json.loads(subprocess.run(
    ["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"],
    cwd=root, check=True, capture_output=True, text=True).stdout)
members = sorted(
    pathlib.Path(p["manifest_path"]).parent.relative_to(root).as_posix()
    for p in metadata["packages"] if p["id"] in metadata["workspace_members"])

copied = set()
for line in dockerfile.read_text().replace("\\\n", " ").splitlines():
    words = shlex.split(line, comments=True)
    if words and words[0].upper() == "COPY" and not any(w.startswith("--from") for w in words):
        copied.update(w.rstrip("/") for w in words[1:-1] if not w.startswith("--"))

missing = [path for member in members for path in (f"{member}/Cargo.toml", member)
           if path not in copied]
if missing:
    print(f"{dockerfile.name} does not copy {', '.join(missing)}: every workspace member "
          f"({', '.join(members)}) must be copied, its Cargo.toml before the dependency "
          "build and then its folder", file=sys.stderr)
    sys.exit(1)
print(f"{dockerfile.name} copies every workspace member: {', '.join(members)}", file=sys.stderr)
