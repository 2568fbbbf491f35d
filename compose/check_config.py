"""Static checks of the dev stack's configuration, run by `make compose-test`:
the compose file validates, and Grafana's provisioning files parse and point at
datasources and dashboards that exist."""
import json
import pathlib
import subprocess
import sys

import yaml  # PyYAML, installed in .venv with the OpenAPI validator

root = pathlib.Path(__file__).resolve().parent.parent
compose_cmd = ["docker", "compose"] if subprocess.run(
    ["docker", "compose", "version"], capture_output=True).returncode == 0 else ["docker-compose"]


def fail(message):
    print(f"compose config check failed: {message}", file=sys.stderr)
    sys.exit(1)


for profile in ([], ["--profile", "full"]):
    result = subprocess.run(compose_cmd + ["-p", "kvstore", "-f", str(root / "compose/docker-compose.yml")]
                            + profile + ["config", "-q"], capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"`compose {' '.join(profile)} config` rejects the file: {result.stderr}")

compose = yaml.safe_load((root / "compose/docker-compose.yml").read_text())
grafana = compose["services"]["grafana"]
mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"])
if mounts.get("../dashboards") != "/var/lib/grafana/dashboards":
    fail("grafana must mount ../dashboards at /var/lib/grafana/dashboards")
if mounts.get("../dashboards/provisioning") != "/etc/grafana/provisioning":
    fail("grafana must mount ../dashboards/provisioning at /etc/grafana/provisioning")

datasources = yaml.safe_load((root / "dashboards/provisioning/datasources/datasources.yaml").read_text())
uids = {d["uid"]: d["type"] for d in datasources["datasources"]}
if uids.get("prometheus") != "prometheus" or uids.get("tempo") != "tempo":
    fail(f"datasources must include prometheus and tempo by uid, found {uids}")
for d in datasources["datasources"]:
    host = d["url"].split("//", 1)[1].split(":", 1)[0]
    if host not in compose["services"]:
        fail(f"datasource {d['name']} points at {d['url']}, not a compose service")

providers = yaml.safe_load((root / "dashboards/provisioning/dashboards/dashboards.yaml").read_text())
for provider in providers["providers"]:
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
print(f"compose config ok: {len(dashboards)} dashboards, datasources {sorted(uids)}")
