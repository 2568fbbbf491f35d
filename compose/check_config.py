"""Static checks of the dev stack's configuration, run by `make compose-test`. They cover
the full profile, whose Grafana and Tempo images need a registry to run: the compose file
validates with and without that profile, every file it mounts exists, Grafana's
provisioning points at datasources and dashboards that exist, Tempo's config parses and
listens where the stack sends traces and Grafana queries, and Prometheus' config passes
promtool (where installed) and scrapes the nodes' API port."""
import json
import pathlib
import re
import shutil
import subprocess
import sys
from urllib.parse import urlsplit

import yaml  # PyYAML, installed in .venv with the OpenAPI validator

root = pathlib.Path(__file__).resolve().parent.parent
compose_cmd = ["docker", "compose"] if subprocess.run(
    ["docker", "compose", "version"], capture_output=True).returncode == 0 else ["docker-compose"]


def fail(message):
    print(f"compose config check failed: {message}", file=sys.stderr)
    sys.exit(1)


def load_yaml(path):
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        fail(f"cannot read {path.relative_to(root)}: {e}")


def provisioned(kind, key):
    """The entries under KEY of every YAML file Grafana provisions KIND from."""
    files = sorted((root / "dashboards/provisioning" / kind).glob("*.yaml"))
    if not files:
        fail(f"Grafana provisions no {kind}: dashboards/provisioning/{kind}/*.yaml is missing")
    return [entry for f in files for entry in (load_yaml(f) or {}).get(key, [])]


for profile in ([], ["--profile", "full"]):
    result = subprocess.run(compose_cmd + ["-p", "kvstore", "-f", str(root / "compose/docker-compose.yml")]
                            + profile + ["config", "-q"], capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"`compose {' '.join(profile)} config` rejects the file: {result.stderr}")

compose = load_yaml(root / "compose/docker-compose.yml")

# Every file or folder a service mounts from this repository exists.
for name, service in compose["services"].items():
    for volume in service.get("volumes", []):
        source = volume.split(":", 1)[0]
        if source.startswith(".") and not (root / "compose" / source).exists():
            fail(f"{name} mounts {source}, which does not exist")

grafana = compose["services"]["grafana"]
mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"])
if mounts.get("../dashboards") != "/var/lib/grafana/dashboards":
    fail("grafana must mount ../dashboards at /var/lib/grafana/dashboards")
if mounts.get("../dashboards/provisioning") != "/etc/grafana/provisioning":
    fail("grafana must mount ../dashboards/provisioning at /etc/grafana/provisioning")

datasources = provisioned("datasources", "datasources")
uids = {d["uid"]: d["type"] for d in datasources}
if uids.get("prometheus") != "prometheus" or uids.get("tempo") != "tempo":
    fail(f"datasources must include prometheus and tempo by uid, found {uids}")
for d in datasources:
    host = d["url"].split("//", 1)[1].split(":", 1)[0]
    if host not in compose["services"]:
        fail(f"datasource {d['name']} points at {d['url']}, not a compose service")

for provider in provisioned("dashboards", "providers"):
    path = provider["options"]["path"]
    if path != "/var/lib/grafana/dashboards":
        fail(f"dashboard provider {provider['name']} reads {path}, which is not mounted")

home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
dashboards = sorted((root / "dashboards").glob("*.json"))
if not dashboards:
    fail("no dashboards in dashboards/")
if pathlib.PurePosixPath(home).name not in {p.name for p in dashboards}:
    fail(f"the home dashboard {home} does not exist")
for path in dashboards:
    d = json.loads(path.read_text())
    variable = next((v for v in d["templating"]["list"] if v["type"] == "datasource"), None)
    if variable is None or variable["current"]["value"] not in uids:
        fail(f"{path.name}: its datasource variable must default to a provisioned uid")
    for panel in d["panels"]:
        if panel["datasource"]["uid"] != "${datasource}":
            fail(f"{path.name} / {panel['title']}: the datasource must come from the variable")
        if not panel.get("description") or not panel["fieldConfig"]["defaults"].get("unit"):
            fail(f"{path.name} / {panel['title']}: every panel needs a description and a unit")

def published(service):
    """The container ports a service publishes, as ints."""
    return {int(str(p).split(":")[-1].split("/")[0]) for p in compose["services"][service].get("ports", [])}


# kvstore is built from the root Dockerfile (the one images/build.sh and `make test`
# build), and compose's defaults for its base images are the Dockerfile's own.
build = compose["x-kvstore"]["build"]
if (root / "compose" / build["context"]).resolve() != root or build.get("dockerfile", "Dockerfile") != "Dockerfile":
    fail("kvstore must be built from the root Dockerfile, with the repository as its context")
arg_defaults = dict(re.findall(r"^ARG (\w+)=(\S+)", (root / "Dockerfile").read_text(), re.M))
for arg, value in build.get("args", {}).items():
    default = re.fullmatch(r"\$\{\w+:-(.+)\}", value)
    if arg not in arg_defaults or not default or default.group(1) != arg_defaults[arg]:
        fail(f"build arg {arg}={value}: its default must be the Dockerfile's ({arg_defaults.get(arg)})")

# Tempo: its config parses, uses only blocks Tempo knows, and listens where the stack
# expects it: Grafana queries its HTTP port, the nodes send OTLP to its gRPC receiver.
tempo_service = compose["services"]["tempo"]
config_flag = next((a.split("=", 1)[1] for a in tempo_service["command"] if a.startswith("-config.file=")), None)
tempo_mounts = {v.split(":")[1]: v.split(":")[0] for v in tempo_service["volumes"]}
if config_flag not in tempo_mounts:
    fail(f"tempo reads -config.file={config_flag}, which no volume mounts")
tempo = load_yaml(root / "compose" / tempo_mounts[config_flag])
if not isinstance(tempo, dict):
    fail("tempo.yaml is not a YAML mapping")
# Tempo 2.x's top-level blocks; Tempo refuses a file with any other key.
TEMPO_BLOCKS = {"target", "http_api_prefix", "server", "internal_server", "distributor",
                "ingester_client", "metrics_generator_client", "querier", "query_frontend",
                "compactor", "ingester", "metrics_generator", "storage", "overrides",
                "memberlist", "usage_report", "cache", "multitenancy_enabled",
                "stream_over_http_enabled"}
if set(tempo) - TEMPO_BLOCKS:
    fail(f"tempo.yaml has keys Tempo does not know: {sorted(set(tempo) - TEMPO_BLOCKS)}")
http_port = tempo.get("server", {}).get("http_listen_port")
protocols = tempo.get("distributor", {}).get("receivers", {}).get("otlp", {}).get("protocols", {})
receiver_ports = {name: int(p["endpoint"].rsplit(":", 1)[1]) for name, p in protocols.items()
                  if p and "endpoint" in p}
if set(receiver_ports) != {"grpc", "http"}:
    fail(f"tempo.yaml must receive OTLP over grpc and http with endpoints, found {sorted(receiver_ports)}")
for port in [http_port, *receiver_ports.values()]:
    if port not in published("tempo"):
        fail(f"tempo listens on {port}, which the compose file does not publish")
trace = tempo.get("storage", {}).get("trace", {})
if trace.get("backend") != "local" or not trace.get("local", {}).get("path") or not trace.get("wal", {}).get("path"):
    fail("tempo.yaml must store traces on the local backend, with local.path and wal.path")
otlp = re.search(r"KV_OTLP_ENDPOINT=(\S+)", (root / "compose/up.sh").read_text())
if not otlp or urlsplit(otlp.group(1)).hostname != "tempo" or urlsplit(otlp.group(1)).port != receiver_ports["grpc"]:
    fail("compose/up.sh must send the nodes' traces to tempo's OTLP gRPC receiver")

# Grafana's datasources reach the ports their services listen on.
listen = {"prometheus": 9090, "tempo": http_port}
for d in datasources:
    url = urlsplit(d["url"])
    if url.port != listen.get(url.hostname):
        fail(f"datasource {d['name']} points at {d['url']}, but {url.hostname} listens on {listen.get(url.hostname)}")
if 9090 not in published("prometheus"):
    fail("prometheus must publish 9090")

# Prometheus: promtool accepts the config, and it scrapes each node's API port.
prometheus_yml = root / "compose/prometheus.yml"
if shutil.which("promtool"):
    result = subprocess.run(["promtool", "check", "config", str(prometheus_yml)], capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"promtool rejects compose/prometheus.yml: {result.stdout}{result.stderr}")
api_port = compose["x-kvstore"]["environment"]["KV_SERVER_PORT"]
nodes = sorted(name for name in compose["services"] if name.startswith("kv"))
scraped = sorted(t for job in load_yaml(prometheus_yml)["scrape_configs"]
                 for c in job.get("static_configs", []) for t in c["targets"])
if scraped != [f"{n}:{api_port}" for n in nodes]:
    fail(f"prometheus scrapes {scraped}, but the nodes are {[f'{n}:{api_port}' for n in nodes]}")
print(f"compose config ok: {len(dashboards)} dashboards, datasources {sorted(uids)}, "
      f"tempo on {http_port} with OTLP on {sorted(receiver_ports.values())}, {len(scraped)} scrape targets")
