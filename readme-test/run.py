#!/usr/bin/env python3
"""Runs the README's quick start and three-node cluster examples as written, and
checks every answer against the comment the README shows for it.

The commands are read from README.md each time, never copied here:
- "## Quick start": its first bash block starts a node (`make run`, and each
  alternative named in an `# or: <command>` comment, one after the other); with each
  running node, every command of the block after it is run.
- "### A three-node cluster": every command of its bash blocks, in order (`make
  cluster`, curls, `kill -9`, the restart, `make cluster-stop`).

A command's expected answer is the comment that ends its last line or, failing that,
the comment line right after it, when that comment starts with an HTTP status:
`# 201` or `# 201 {"key":"user:1",...}`. The status must be equal and the body the
same JSON, with two loose forms for what varies from run to run: a value written
`"..."` (or `...`) matches any value, and an object ending in `, ...}` may have more
members than the ones shown. A `curl` without such a comment must answer 2xx, and
every command must exit 0.

`curl` is run as written, through a shell function that also records the status and
the body. The commands run in a scratch directory holding the checkout's `Makefile`,
`config/` and `target/` (`cargo` there works on the checkout's workspace), so the
README's relative paths (`data/`, `data/cluster/node1.pid`) start empty and the
checkout's own `data/` is left alone. The README's ports (8080, 8081-8083,
9001-9003) must be free.

Usage: python3 readme-test/run.py [README.md]   (run from anywhere; `make test` runs it)
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORTS = [8080, 8081, 8082, 8083, 9001, 9002, 9003]
# How long a node started by a quick-start command may take to become ready; it may
# have to compile first.
START_DEADLINE = 600
COMMAND_TIMEOUT = 600
STOP_DEADLINE = 30

# Records each curl's status and body, then prints the body as curl would.
SHELL_PRELUDE = r"""
set -o pipefail
curl() {
  command curl -sS -o "$README_TEST_BODY" -w '%{http_code}' "$@" >"$README_TEST_STATUS" || return
  cat "$README_TEST_BODY"
}
"""

REST = "\0rest"  # marks an object whose README form ends in `, ...}`
ANY = "..."


def say(msg):
    print(f"readme-test: {msg}", flush=True)


class Command:
    def __init__(self, text, comment, line, trailing):
        self.text = text  # the shell command, continuation lines joined
        self.comment = comment  # its expected-answer comment (or its trailing one), or None
        self.line = line  # line number in README.md
        self.trailing = trailing  # the comment on its own last line, or None

    def expectation(self):
        """(status, body or None), or None when the comment states no status."""
        m = STATUS_COMMENT.match(self.comment.strip()) if self.comment else None
        if not m:
            return None
        body = m.group(2)
        return int(m.group(1)), (parse_loose_json(body, self.line) if body else None)


STATUS_COMMENT = re.compile(r"^(\d{3})(?:\s+(.*))?$")


def states_status(comment):
    return comment is not None and STATUS_COMMENT.match(comment.strip()) is not None


def split_sections(readme):
    """{heading text: [bash block, ...]} for every heading, blocks as lists of
    (line number, text)."""
    sections, heading, block, fence = {}, None, None, None
    for no, line in enumerate(readme.splitlines(), 1):
        if fence is None:
            m = re.match(r"^(`{3,})(\w*)\s*$", line)
            if m:
                fence = m.group(1)
                block = [] if m.group(2) in ("bash", "sh", "shell") else None
                continue
            h = re.match(r"^(#{1,6})\s+(.*?)\s*$", line)
            if h:
                heading = h.group(2)
                sections.setdefault(heading, [])
        elif line.strip() == fence:
            if block is not None and heading is not None:
                sections[heading].append(block)
            fence, block = None, None
        elif block is not None:
            block.append((no, line))
    return sections


def split_comment(line):
    """(code, comment or None): a `#` that starts a word outside quotes begins a comment."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), None


def parse_commands(block):
    """The commands of a bash block, each with the comment that states its answer."""
    commands, pending, start = [], [], None
    lines = list(block)
    i = 0
    while i < len(lines):
        no, raw = lines[i]
        i += 1
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        code, comment = split_comment(raw)
        if start is None:
            start = no
        if code.endswith("\\"):
            pending.append(code[:-1].rstrip())
            continue
        pending.append(code)
        trailing = comment
        if not states_status(comment) and i < len(lines) and lines[i][1].lstrip().startswith("#"):
            below = lines[i][1].lstrip()[1:].strip()
            if states_status(below):
                comment = below
        commands.append(Command(" ".join(p.strip() for p in pending), comment, start, trailing))
        pending, start = [], None
    return commands


def parse_loose_json(text, line):
    """JSON with `...` for any value and a trailing `, ...` in an object for more
    members."""
    out, i, quote = [], 0, False
    while i < len(text):
        ch = text[i]
        if quote:
            out.append(ch)
            if ch == "\\" and i + 1 < len(text):
                out.append(text[i + 1])
                i += 1
            elif ch == '"':
                quote = False
        elif ch == '"':
            quote = True
            out.append(ch)
        elif text.startswith("...", i):
            before = "".join(out).rstrip()
            after = text[i + 3 :].lstrip()
            if after.startswith("}") and before.endswith(("{", ",")):
                out.append(json.dumps(REST) + ": true")
            else:
                out.append(json.dumps(ANY))
            i += 2
        else:
            out.append(ch)
        i += 1
    try:
        return json.loads("".join(out))
    except json.JSONDecodeError as e:
        raise SystemExit(f"README.md line {line}: the expected answer is not JSON: {e}: {text}")


def matches(expected, actual):
    if expected == ANY:
        return True
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return False
        keys = set(expected) - {REST}
        if REST not in expected and set(actual) != keys:
            return False
        return all(k in actual and matches(expected[k], actual[k]) for k in keys)
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(matches(e, a) for e, a in zip(expected, actual))
        )
    return type(expected) is type(actual) and expected == actual


def port_in_use(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Sandbox:
    """The scratch directory the README's commands run in."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="kvstore-readme-test.")
        for name in ("Makefile", "config", "target"):
            os.symlink(os.path.join(ROOT, name), os.path.join(self.dir, name))
        bindir = os.path.join(self.dir, ".bin")
        os.mkdir(bindir)
        real_cargo = shutil.which("cargo")
        if real_cargo is None:
            raise SystemExit("readme-test: cargo is not on PATH")
        # `cargo <command> ...` here works on the checkout's workspace; the binary runs
        # in this directory, as `cargo run` keeps the caller's directory.
        wrapper = os.path.join(bindir, "cargo")
        with open(wrapper, "w") as f:
            f.write(
                "#!/bin/sh\n"
                'sub=$1; shift\n'
                f'exec "{real_cargo}" "$sub" --manifest-path "{ROOT}/Cargo.toml" "$@"\n'
            )
        os.chmod(wrapper, 0o755)
        self.body = os.path.join(self.dir, ".curl-body")
        self.status = os.path.join(self.dir, ".curl-status")
        env = {k: v for k, v in os.environ.items() if not k.startswith("KV_")}
        # A make that runs this must not hand its own flags and variables to the
        # README's `make` commands.
        for k in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "CARGO"):
            env.pop(k, None)
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        env["README_TEST_BODY"] = self.body
        env["README_TEST_STATUS"] = self.status
        self.env = env
        self.pids = set()  # every node pid seen in data/cluster/*.pid
        self.log = open(os.path.join(self.dir, ".commands.log"), "w+")

    def note_cluster_pids(self):
        cluster = os.path.join(self.dir, "data", "cluster")
        if not os.path.isdir(cluster):
            return
        for name in os.listdir(cluster):
            if name.endswith(".pid"):
                try:
                    with open(os.path.join(cluster, name)) as f:
                        self.pids.add(int(f.read().strip()))
                except (OSError, ValueError):
                    pass

    def run(self, command):
        """Runs one README command; returns (exit code, curl status or None, body)."""
        for path in (self.body, self.status):
            if os.path.exists(path):
                os.remove(path)
        self.log.write(f"$ {command}\n")
        self.log.flush()
        self.note_cluster_pids()
        proc = self.spawn(command)
        try:
            rc = proc.wait(timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = f"a timeout ({COMMAND_TIMEOUT} s)"
        self.log.write("\n")
        self.note_cluster_pids()
        status = body = None
        if os.path.exists(self.status):
            with open(self.status) as f:
                status = int(f.read().strip() or 0)
            # No body file: curl reached nobody (its status is then 000).
            if os.path.exists(self.body):
                with open(self.body, "rb") as f:
                    body = f.read().decode("utf-8", "replace")
            else:
                body = ""
        return rc, status, body

    def start(self, command):
        """Starts a command that keeps running (a node in the foreground)."""
        self.log.write(f"$ {command} &\n")
        self.log.flush()
        return self.spawn(command)

    def spawn(self, command):
        """`command` in bash, in its own process group (so that it can be stopped whole)."""
        return subprocess.Popen(
            ["bash", "-c", SHELL_PRELUDE + command],
            cwd=self.dir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )

    def output_since(self, offset, limit=4000):
        self.log.flush()
        with open(self.log.name) as f:
            f.seek(offset)
            return f.read()[-limit:]

    def log_tail(self, lines=40):
        self.log.flush()
        with open(self.log.name) as f:
            return "".join(f.readlines()[-lines:])

    def stop_nodes(self):
        """Waits for the cluster's nodes to exit (SIGKILL after a while)."""
        deadline = time.time() + STOP_DEADLINE
        for pid in sorted(self.pids):
            while alive(pid) and time.time() < deadline:
                time.sleep(0.1)
            if alive(pid):
                say(f"node pid {pid} did not exit: killing it")
                os.kill(pid, signal.SIGKILL)

    def cleanup(self):
        for pid in self.pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return False


def stop_group(proc):
    """SIGTERM to a started command's process group, as Ctrl-C would; SIGKILL later."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=STOP_DEADLINE)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Other processes of the group (the node under cargo) may outlive the shell.
    deadline = time.time() + STOP_DEADLINE
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)


def wait_ready(url, proc):
    deadline = time.time() + START_DEADLINE
    while time.time() < deadline:
        if proc.poll() is not None:
            return f"exited with {proc.returncode} before it was ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return None
        except OSError:
            pass
        time.sleep(0.2)
    return f"not ready within {START_DEADLINE} s"


def wait_ports_free(ports):
    deadline = time.time() + STOP_DEADLINE
    while any(port_in_use(p) for p in ports):
        if time.time() > deadline:
            return False
        time.sleep(0.1)
    return True


class Checker:
    def __init__(self, sandbox):
        self.sandbox = sandbox
        self.failures = []
        self.checked = 0

    def check(self, cmd):
        self.sandbox.log.flush()
        output_from = self.sandbox.log.tell()
        rc, status, body = self.sandbox.run(cmd.text)
        where = f"README.md:{cmd.line}: {cmd.text}"
        expected = cmd.expectation()
        problem = None
        if rc != 0 and re.search(r"\|\s*jq\b", cmd.text) and shutil.which("jq") is None:
            say(f"SKIPPED (jq is not installed): {where}")
            return
        if rc != 0:
            problem = f"exited with {rc}"
        elif expected is not None:
            want_status, want_body = expected
            if status is None:
                problem = "the README shows an answer, but no curl ran"
            elif status != want_status:
                problem = f"status {status}, the README says {want_status}; body: {body}"
            elif want_body is not None:
                try:
                    got = json.loads(body)
                except json.JSONDecodeError:
                    got = None
                if got is None or not matches(want_body, got):
                    problem = f"body {body.strip()}\n    the README says {cmd.comment}"
        elif status is not None and not 200 <= status < 300:
            problem = f"status {status}; body: {body}"
        self.checked += 1
        if problem:
            self.failures.append(f"{where}\n    {problem}")
            say(f"FAIL {where}\n    {problem}\n    its output:\n{self.sandbox.output_since(output_from)}")
        else:
            say(f"ok   {where}")


def quick_start(sections, sandbox, checker):
    blocks = sections.get("Quick start", [])
    if len(blocks) < 2:
        raise SystemExit("readme-test: README.md's Quick start has no start and example blocks")
    starts = []
    for cmd in parse_commands(blocks[0]):
        starts.append(cmd.text)
        if cmd.trailing and cmd.trailing.startswith("or:"):
            starts.append(cmd.trailing[len("or:") :].strip())
    examples = [c for b in blocks[1:] for c in parse_commands(b)]
    if not starts or not any(c.expectation() for c in examples):
        raise SystemExit("readme-test: README.md's Quick start shows no checkable examples")
    for start in starts:
        say(f"starting the node with `{start}`")
        proc = sandbox.start(start)
        try:
            problem = wait_ready("http://127.0.0.1:8080/ready", proc)
            if problem:
                checker.failures.append(f"`{start}` {problem}")
                say(f"FAIL `{start}` {problem}; its output:\n{sandbox.log_tail()}")
                continue
            for cmd in examples:
                checker.check(cmd)
        finally:
            stop_group(proc)
        if not wait_ports_free([8080, 9001]):
            raise SystemExit(f"readme-test: `{start}` left ports 8080/9001 in use")


def cluster(sections, sandbox, checker):
    blocks = sections.get("A three-node cluster", [])
    commands = [c for b in blocks for c in parse_commands(b)]
    if not any(c.expectation() for c in commands):
        raise SystemExit("readme-test: README.md's three-node cluster shows no checkable examples")
    say("the three-node cluster")
    try:
        for cmd in commands:
            checker.check(cmd)
    finally:
        sandbox.stop_nodes()


def main():
    readme_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "README.md")
    with open(readme_path) as f:
        sections = split_sections(f.read())
    busy = [p for p in PORTS if port_in_use(p)]
    if busy:
        raise SystemExit(
            f"readme-test: the README's ports {busy} are in use; stop what listens there "
            "(a `make run`, `make cluster` or `make up`?) and run again"
        )
    sandbox = Sandbox()
    checker = Checker(sandbox)
    ok = False
    try:
        quick_start(sections, sandbox, checker)
        cluster(sections, sandbox, checker)
        ok = not checker.failures
    finally:
        if not ok:
            say("the commands' output (last lines):\n" + sandbox.log_tail(60))
            for i in (1, 2, 3):
                log = os.path.join(sandbox.dir, "data", "cluster", f"node{i}.log")
                if os.path.exists(log):
                    with open(log) as f:
                        tail = "".join(f.readlines()[-10:])
                    say(f"node{i}.log (last lines):\n{tail}")
        sandbox.cleanup()
    if checker.failures:
        say(f"{len(checker.failures)} of {checker.checked} README commands failed:")
        for f in checker.failures:
            print("  " + f)
        sys.exit(1)
    say(f"all {checker.checked} README commands answered as the README shows")


if __name__ == "__main__":
    main()
