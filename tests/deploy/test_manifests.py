"""The kustomize overlays: valid for Kubernetes, and saying what the service needs.

Schema validity comes from deploy/k8s/validate.py (kubernetes-validate, strict);
the tests below check what a schema cannot: that names, ports, labels and
settings agree with each other and with the server and image.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from moderation.policy.registry import policy_files
from tests.conftest import POLICIES, ROOT
from tests.deploy.conftest import DEPLOY

pytestmark = pytest.mark.deploy

OVERLAYS = DEPLOY / "k8s" / "overlays"
POLICY_MOUNT = "/etc/moderation/policies"
# deploy/k8s/base: MODERATION_EXPLAINER_TARGET, as the scorer's explainer client reads it.
EXPLAINER_TARGET = "moderation-explainer:50052"


@pytest.fixture(scope="module")
def rendered(manifest_validator: ModuleType) -> dict[str, list[dict]]:
    return {overlay.name: manifest_validator.render(overlay) for overlay in sorted(OVERLAYS.iterdir())}


def by_kind(resources: list[dict], kind: str) -> dict[str, dict]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env(deployment: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container(deployment).get("env", [])}


def image_uid() -> int:
    match = re.search(r"^ARG APP_UID=(\d+)$", (DEPLOY / "Containerfile").read_text(), re.MULTILINE)
    assert match, "deploy/Containerfile declares ARG APP_UID"
    return int(match.group(1))


def test_both_overlays_exist(rendered: dict[str, list[dict]]) -> None:
    assert set(rendered) == {"dev", "prod"}


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_overlay_validates_strictly(manifest_validator: ModuleType, overlay: str) -> None:
    count, findings = manifest_validator.validate_overlay(OVERLAYS / overlay)
    assert count > 0
    assert findings == [], "\n".join(map(str, findings))


@pytest.mark.parametrize(
    ("resource", "expected_problem"),
    [
        # A misspelt field: strict schemas reject what the API server would silently drop.
        (
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {"replica": 1, "selector": {}, "template": {}}},
            "'replica' was unexpected",
        ),
        # A misspelt apiVersion: kubernetes-validate only warns; the validator must not let it through.
        ({"apiVersion": "app/v1", "kind": "Deployment", "metadata": {"name": "x"}}, "Couldn't find schema"),
        # A custom resource without a vendored schema.
        ({"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": {"name": "x"}}, "vendor a JSON schema"),
        # The vendored ServiceMonitor schema is strict too.
        (
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "ServiceMonitor",
                "metadata": {"name": "x"},
                "spec": {"selector": {}, "endpoints": [{"port": "metrics", "intervl": "30s"}]},
            },
            "'intervl' was unexpected",
        ),
        (
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "ServiceMonitor",
                "metadata": {"name": "x"},
                "spec": {"selector": {}, "endpoints": [{"port": "metrics", "interval": "30 seconds"}]},
            },
            "does not match",
        ),
    ],
)
def test_validator_rejects(manifest_validator: ModuleType, resource: dict, expected_problem: str) -> None:
    problems = manifest_validator.validate_resource(resource)
    assert any(expected_problem in p for p in problems), problems


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_policy_configmap_carries_every_policy_file(
    rendered: dict[str, list[dict]], manifest_validator: ModuleType, overlay: str
) -> None:
    configmaps = by_kind(rendered[overlay], "ConfigMap")
    # The fixed name (no hash suffix) is what lets an edit reach running pods
    # through the kubelet's symlink swap instead of a rollout.
    assert "moderation-policies" in configmaps, sorted(configmaps)
    data = configmaps["moderation-policies"]["data"]
    files = {p.name: p.read_text() for p in policy_files(POLICIES)}  # what the server loads
    assert sorted(files) == manifest_validator.policy_file_names(POLICIES), "validate.py checks the files the server loads"
    assert set(data) == set(files), "list every policy file in policies/Kustomization (validate.py prints the line)"
    assert data == files
    for name, deployment in by_kind(rendered[overlay], "Deployment").items():
        assert env(deployment)["MODERATION_POLICIES"] == POLICY_MOUNT, name
        mounts = {m["mountPath"]: m for m in container(deployment)["volumeMounts"]}
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes[mounts[POLICY_MOUNT]["name"]]["configMap"]["name"] == "moderation-policies", name
        # A subPath mount would never see the symlink swap.
        assert "subPath" not in mounts[POLICY_MOUNT], name


def test_the_policy_kustomization_is_not_read_as_a_policy() -> None:
    # policies/ holds the kustomization that generates the ConfigMap (kustomize
    # reads generator files only below it); the server loads every *.yaml there.
    assert (POLICIES / "Kustomization").is_file()
    assert not {"kustomization.yaml", "kustomization.yml"} & {p.name.lower() for p in POLICIES.iterdir()}
    assert "Kustomization" not in {p.name for p in policy_files(POLICIES)}


def copy_of_the_manifests(destination: Path) -> Path:
    """deploy/k8s and policies/ alone, as a clean clone has them; returns the copy's root."""
    shutil.copytree(DEPLOY / "k8s", destination / "deploy" / "k8s", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(POLICIES, destination / "policies")
    return destination


def test_overlays_build_with_the_plain_command(kubectl: str, tmp_path: Path) -> None:
    """`kubectl kustomize` / `kubectl apply -k` without --load-restrictor, from a copy holding nothing else."""
    root = copy_of_the_manifests(tmp_path)
    for overlay in ("dev", "prod"):
        command = [kubectl, "kustomize", f"deploy/k8s/overlays/{overlay}"]
        copied = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120)
        assert copied.returncode == 0, copied.stderr
        in_place = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert in_place.returncode == 0, in_place.stderr
        assert copied.stdout == in_place.stdout, overlay


def test_a_new_policy_file_fails_validation_with_the_line_to_add(
    manifest_validator: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = copy_of_the_manifests(tmp_path)
    monkeypatch.chdir(root)
    overlay, policies = root / "deploy" / "k8s" / "overlays" / "dev", root / "policies"
    shutil.copy(policies / "default.yaml", policies / "strict.yml")

    _, findings = manifest_validator.validate_overlay(overlay, policies)
    (finding,) = findings
    assert finding.resource == "ConfigMap/moderation-policies"
    expected = r'policies/strict\.yml is not in the ConfigMap: add the line "( +- strict\.yml)" after line (\d+) of policies/Kustomization'
    match = re.fullmatch(expected, finding.problem)
    assert match, finding.problem

    # Doing exactly what the finding says makes the overlay valid and ships the file.
    lines = (policies / "Kustomization").read_text().splitlines(keepends=True)
    lines.insert(int(match.group(2)), match.group(1) + "\n")
    (policies / "Kustomization").write_text("".join(lines))
    assert manifest_validator.validate_overlay(overlay, policies)[1] == []
    (configmap,) = [r for r in manifest_validator.render(overlay) if r["kind"] == "ConfigMap"]
    assert configmap["data"]["strict.yml"] == (policies / "strict.yml").read_text()


def test_the_policy_configmap_must_not_carry_other_files(manifest_validator: ModuleType) -> None:
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "moderation-policies"}}
    data = {"default.yaml": "", "default.tests.yaml": ""}
    problems = manifest_validator.check_policy_configmap([{**configmap, "data": data}], POLICIES)
    assert len(problems) == 1 and problems[0].startswith("key default.tests.yaml is not a policy file"), problems
    assert manifest_validator.check_policy_configmap([], POLICIES) == ["expected one ConfigMap moderation-policies, found 0"]


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_pods_are_hardened_and_bounded(rendered: dict[str, list[dict]], overlay: str) -> None:
    deployments = by_kind(rendered[overlay], "Deployment")
    assert deployments
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == image_uid(), name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        c = container(deployment)
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, name
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], name
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][bound]), f"{name}: {bound}"
        # /tmp is the only writable path of the read-only image.
        tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
        assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"]), name


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_termination_outlasts_the_drain(rendered: dict[str, list[dict]], overlay: str) -> None:
    for name, deployment in by_kind(rendered[overlay], "Deployment").items():
        c = container(deployment)
        grace_s = float(env(deployment)["MODERATION_GRACE_PERIOD_S"])
        pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep", name
        termination_s = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert termination_s > float(pre_stop[1]) + grace_s, f"{name}: SIGKILL would cut the drain short"


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_probes_are_native_grpc_health_checks(rendered: dict[str, list[dict]], overlay: str) -> None:
    for name, deployment in by_kind(rendered[overlay], "Deployment").items():
        c = container(deployment)
        ports = {p["containerPort"] for p in c["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] in ports, f"{name}: {probe}"
        startup = c["startupProbe"]
        # Models load slowly: a pod gets minutes, not the default 30 s, before it is killed.
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, name


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_services_and_budgets_select_their_pods(rendered: dict[str, list[dict]], overlay: str) -> None:
    resources = rendered[overlay]
    pods = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in by_kind(resources, "Deployment").items()}

    def selected(selector: dict[str, str]) -> list[str]:
        return [name for name, labels in pods.items() if selector.items() <= labels.items()]

    for name, service in by_kind(resources, "Service").items():
        (deployment,) = selected(service["spec"]["selector"])
        port_names = {p["name"] for p in container(by_kind(resources, "Deployment")[deployment])["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"{name}: {port}"
    for name, budget in by_kind(resources, "PodDisruptionBudget").items():
        assert len(selected(budget["spec"]["selector"]["matchLabels"])) == 1, name
    for name, policy in by_kind(resources, "NetworkPolicy").items():
        assert len(selected(policy["spec"]["podSelector"]["matchLabels"])) == 1, name


def test_dev_is_one_scorer_and_one_explainer_on_random_weights(rendered: dict[str, list[dict]]) -> None:
    """The scorer image has no torch, so the explainer cannot run in-process: dev runs it apart, as prod does."""
    resources = rendered["dev"]
    deployments = by_kind(resources, "Deployment")
    assert set(deployments) == {"moderation-scorer", "moderation-explainer"}
    assert all(d["spec"]["replicas"] == 1 for d in deployments.values())
    assert not by_kind(resources, "HorizontalPodAutoscaler"), "an autoscaler would override the single replica"
    scorer, explainer = env(deployments["moderation-scorer"]), env(deployments["moderation-explainer"])
    assert scorer["MODERATION_EXPLAINER_TARGET"] == EXPLAINER_TARGET and "MODERATION_EXPLAINER_MODE" not in scorer
    assert scorer["MODERATION_CLIP_WEIGHTS"] == "random" and explainer["MODERATION_EXPLAINER_WEIGHTS"] == "random"
    assert scorer["MODERATION_ALLOW_DOWNLOADS"] == explainer["MODERATION_ALLOW_DOWNLOADS"] == "false"


# deploy/Containerfile's two targets, as the base manifests name them (the overlays map the names).
SCORER_IMAGE, TORCH_IMAGE = "moderation-scorer", "moderation-torch"
# What only the torch image may hold (distribution names; nvidia-* too).
TORCH_STACK = {"torch", "torchvision", "open-clip-torch", "transformers", "triton", "xgrammar", "onnxscript"}


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_the_scorer_runs_the_scorer_image_and_everything_torch_runs_the_torch_image(
    rendered: dict[str, list[dict]], overlay: str
) -> None:
    """issue 19: the torch-free scorer image for the scorer; export (init container) and explainer from the torch image."""
    overlay_file = OVERLAYS / overlay / "kustomization.yaml"
    import yaml

    mapped = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in yaml.safe_load(overlay_file.read_text())["images"]}
    assert set(mapped) == {SCORER_IMAGE, TORCH_IMAGE}
    assert mapped[SCORER_IMAGE].split(":")[0].endswith(SCORER_IMAGE) and mapped[TORCH_IMAGE].split(":")[0].endswith(TORCH_IMAGE)
    deployments = by_kind(rendered[overlay], "Deployment")
    scorer_pod = deployments["moderation-scorer"]["spec"]["template"]["spec"]
    (init,) = scorer_pod["initContainers"]
    assert container(deployments["moderation-scorer"])["image"] == mapped[SCORER_IMAGE]
    assert init["image"] == mapped[TORCH_IMAGE]
    assert container(deployments["moderation-explainer"])["image"] == mapped[TORCH_IMAGE]
    if overlay == "prod":
        assert not init["image"].startswith("localhost/"), "prod pulls from a registry"
    # The scorer's own command is the scorer image's entrypoint (`moderation serve`), with the folder.
    assert "command" not in container(deployments["moderation-scorer"])
    assert env(deployments["moderation-scorer"])["MODERATION_CLIP_MODEL_DIR"] == "/model/clip"


def containerfile_stages() -> dict[str, str]:
    """deploy/Containerfile: each stage's name -> its text (FROM line included)."""
    text = (DEPLOY / "Containerfile").read_text()
    parts = re.split(r"^(?=FROM )", text, flags=re.MULTILINE)[1:]
    return {re.match(r"FROM \S+ AS (\S+)", part).group(1): part for part in parts}


def stage_chain(stages: dict[str, str], target: str) -> list[str]:
    """The target stage and every stage it is built FROM, down to the base image."""
    chain = [target]
    while (parent := re.match(r"FROM (\S+) AS", stages[chain[-1]]).group(1)) in stages:
        chain.append(parent)
    return chain


def test_the_containerfile_scorer_target_installs_no_torch() -> None:
    stages = containerfile_stages()
    assert {"build", "scorer", "torch"} <= set(stages)
    assert list(stages)[-1] == "scorer", "a plain `podman build` (no --target) builds the last stage: the scorer"
    scorer_chain = stage_chain(stages, "scorer")
    assert "torch-deps" in stage_chain(stages, "torch") and "torch-deps" not in scorer_chain
    scorer_text = "".join(stages[s] for s in scorer_chain)
    assert "requirements-scorer.txt" in scorer_text and "requirements-torch.txt" not in scorer_text
    assert 'ENTRYPOINT ["moderation", "serve"]' in stages["scorer"]
    # The build stage writes the lists: run its two commands on pyproject.toml.
    for name, extra in (("requirements-scorer.txt", "banks"), ("requirements-torch.txt", "torch")):
        (command,) = re.findall(rf"python3 -c '([^']*)' > /dist/{re.escape(name)}", stages["build"])
        written = subprocess.run([sys.executable, "-c", command], cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
        assert f'"{extra}"' in command, name
        names = {canonicalize_name(Requirement(line).name) for line in written if line}
        if name == "requirements-scorer.txt":
            assert not names & TORCH_STACK, names & TORCH_STACK
        else:
            assert "torch" in names and "open-clip-torch" in names


def test_the_scorer_dependencies_do_not_pull_torch_in() -> None:
    """Every package the base dependencies and the banks extra require, transitively (as installed here), is torch-free."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pending = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["banks"]]
    seen: dict[str, list[str]] = {}
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        requires = metadata.distribution(name).requires or []
        seen[name] = requires
        for line in requires:
            child = Requirement(line)
            # A dependency's own extras are not installed unless asked for.
            if child.marker is None or child.marker.evaluate({"extra": ""}):
                pending.append(Requirement(str(child)))
            for extra in requirement.extras:
                if child.marker is not None and child.marker.evaluate({"extra": extra}):
                    pending.append(Requirement(f"{child.name}{'[' + ','.join(child.extras) + ']' if child.extras else ''}"))
    assert {"onnxruntime", "numpy", "pillow", "grpcio", "av", "faiss-cpu", "pdqhash"} <= set(seen)
    pulled = {n for n in seen if n in TORCH_STACK or n.startswith("nvidia-")}
    assert not pulled, f"the scorer image would install {sorted(pulled)}"


def test_prod_runs_the_explainer_apart_and_only_the_scorer_reaches_it(rendered: dict[str, list[dict]]) -> None:
    resources = rendered["prod"]
    deployments = by_kind(resources, "Deployment")
    assert set(deployments) == {"moderation-scorer", "moderation-explainer"}
    explainer = deployments["moderation-explainer"]
    assert container(explainer)["command"] == ["moderation", "explain-serve", "--port", "50052", "--metrics-port", "9465"]
    assert env(deployments["moderation-scorer"])["MODERATION_EXPLAINER_TARGET"] == EXPLAINER_TARGET
    host, port = EXPLAINER_TARGET.split(":")
    assert int(port) in {p["port"] for p in by_kind(resources, "Service")[host]["spec"]["ports"]}

    (rule_for_grpc,) = [
        rule for rule in by_kind(resources, "NetworkPolicy")["moderation-explainer"]["spec"]["ingress"]
        if any(p["port"] == "grpc" for p in rule["ports"])
    ]  # fmt: skip
    scorer_labels = deployments["moderation-scorer"]["spec"]["template"]["metadata"]["labels"]
    assert rule_for_grpc["from"] == [{"podSelector": {"matchLabels": scorer_labels}}]


def test_prod_serves_tls_from_a_secret_and_weights_read_only(rendered: dict[str, list[dict]]) -> None:
    resources = rendered["prod"]
    for name, deployment in by_kind(resources, "Deployment").items():
        settings = env(deployment)
        assert settings["MODERATION_REFLECTION"] == "false", name
        assert settings["MODERATION_ALLOW_DOWNLOADS"] == "false", name
        assert settings["MODERATION_WEIGHTS_CACHE"] == "/models", name
        assert "MODERATION_CLIP_WEIGHTS" not in settings, f"{name}: prod must not run random weights"
        mounts = {m["mountPath"]: m for m in container(deployment)["volumeMounts"]}
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert mounts["/models"]["readOnly"] is True, name
        claim = volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]
        assert claim["readOnly"] is True and claim["claimName"] in by_kind(resources, "PersistentVolumeClaim"), name
        image = container(deployment)["image"]
        assert not image.startswith("localhost/"), f"{name}: prod pulls from a registry, not {image}"

    scorer = by_kind(resources, "Deployment")["moderation-scorer"]
    settings = env(scorer)
    mounts = {m["mountPath"]: m for m in container(scorer)["volumeMounts"]}
    volumes = {v["name"]: v for v in scorer["spec"]["template"]["spec"]["volumes"]}
    for variable in ("MODERATION_TLS_CERT", "MODERATION_TLS_KEY", "MODERATION_TLS_CLIENT_CA"):
        path = Path(settings[variable])
        mount = mounts[str(path.parent)]
        assert mount["readOnly"] is True and "secret" in volumes[mount["name"]], variable
    # The kubelet's gRPC probe speaks plaintext only: with TLS on the API port
    # the probes must use the plaintext health port.
    api_port = next(p["containerPort"] for p in container(scorer)["ports"] if p["name"] == "grpc")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container(scorer)[probe]["grpc"]["port"] == int(settings["MODERATION_HEALTH_PORT"]) != api_port, probe


def test_prod_explainer_hop_is_mutual_tls_with_a_token(rendered: dict[str, list[dict]]) -> None:
    deployments = by_kind(rendered["prod"], "Deployment")
    explainer, scorer = deployments["moderation-explainer"], deployments["moderation-scorer"]

    def secret_of(deployment: dict, path: str) -> str:
        mounts = {m["mountPath"]: m for m in container(deployment)["volumeMounts"]}
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        mount = mounts[str(Path(path).parent)]
        assert mount["readOnly"] is True, path
        return volumes[mount["name"]]["secret"]["secretName"]

    served, calling = env(explainer), env(scorer)
    for variable in ("MODERATION_TLS_CERT", "MODERATION_TLS_KEY", "MODERATION_TLS_CLIENT_CA", "MODERATION_AUTH_TOKENS_FILE"):
        assert secret_of(explainer, served[variable]), variable
    for variable in ("MODERATION_EXPLAINER_TLS_CA", "MODERATION_EXPLAINER_TLS_CLIENT_CERT", "MODERATION_EXPLAINER_TLS_CLIENT_KEY",
                     "MODERATION_EXPLAINER_TOKEN_FILE"):  # fmt: skip
        assert secret_of(scorer, calling[variable]), variable
    # Both ends read the same token Secret; with TLS on its API port the explainer's probes use the plaintext health port.
    assert secret_of(explainer, served["MODERATION_AUTH_TOKENS_FILE"]) == secret_of(scorer, calling["MODERATION_EXPLAINER_TOKEN_FILE"])
    api_port = next(p["containerPort"] for p in container(explainer)["ports"] if p["name"] == "grpc")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container(explainer)[probe]["grpc"]["port"] == int(served["MODERATION_HEALTH_PORT"]) != api_port, probe


def test_prod_autoscales_the_scorer_and_is_scraped(rendered: dict[str, list[dict]]) -> None:
    resources = rendered["prod"]
    (autoscaler,) = by_kind(resources, "HorizontalPodAutoscaler").values()
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    assert autoscaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "moderation-scorer"}
    assert autoscaler["spec"]["minReplicas"] >= 2
    assert "replicas" not in by_kind(resources, "Deployment")["moderation-scorer"]["spec"], "the autoscaler owns the count"

    (monitor,) = by_kind(resources, "ServiceMonitor").values()
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = [s for s in by_kind(resources, "Service").values() if selector.items() <= s["metadata"]["labels"].items()]
    assert {s["metadata"]["name"] for s in scraped} == {"moderation-scorer", "moderation-explainer"}
    endpoint_ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    for service in scraped:
        assert endpoint_ports <= {p["name"] for p in service["spec"]["ports"]}


def test_prod_replicas_share_one_state_store_named_by_a_secret(rendered: dict[str, list[dict]]) -> None:
    """Every scorer replica writes the same PostgreSQL; its URL (with a password) comes from a Secret, never a literal."""
    scorer = by_kind(rendered["prod"], "Deployment")["moderation-scorer"]
    (variable,) = [e for e in container(scorer)["env"] if e["name"] == "MODERATION_DATABASE_URL"]
    assert "value" not in variable
    assert variable["valueFrom"] == {"secretKeyRef": {"name": "moderation-database", "key": "url"}}
    # One pod's file would be lost with the pod and seen by no other replica.
    assert "MODERATION_EMBEDDING_STORE" not in env(scorer) and "MODERATION_THUMBNAIL_STORE" not in env(scorer)
    dev_scorer = by_kind(rendered["dev"], "Deployment")["moderation-scorer"]
    assert "MODERATION_DATABASE_URL" not in env(dev_scorer)


def test_every_secret_the_prod_pods_read_has_a_create_command_in_the_deploy_docs(rendered: dict[str, list[dict]]) -> None:
    """An operator applying prod must be able to create each Secret it mounts or reads, with the keys it reads."""
    needed: dict[str, set[str]] = {}
    for deployment in by_kind(rendered["prod"], "Deployment").values():
        spec = deployment["spec"]["template"]["spec"]
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                keys = {item["key"] for item in volume["secret"].get("items", [])}
                needed.setdefault(volume["secret"]["secretName"], set()).update(keys)
        for variable in container(deployment).get("env", []):
            if ref := variable.get("valueFrom", {}).get("secretKeyRef"):
                needed.setdefault(ref["name"], set()).add(ref["key"])
    assert "moderation-curation-tokens" in needed, "the prod scorer turns bank curation on from its own Secret"
    assert "moderation-reviewer-tokens" in needed, "the prod scorer turns the review queue on from its own Secret"
    docs = (ROOT / "docs" / "deploy.md").read_text()
    for name, keys in sorted(needed.items()):
        commands = re.findall(rf"create secret generic {re.escape(name)}\b[^`]*", docs)
        assert commands, f"docs/deploy.md has no `kubectl create secret generic {name}` command"
        for key in keys:
            assert any(f"--from-literal={key}=" in c or f"--from-file={key}" in c for c in commands), (
                f"the create command for {name} does not set the key {key!r} the pod reads"
            )


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_the_scorer_serves_the_folder_its_init_container_exports(rendered: dict[str, list[dict]], overlay: str) -> None:
    """issue 19: no export inside the serving container; the init container's settings are the scorer's."""
    deployment = by_kind(rendered[overlay], "Deployment")["moderation-scorer"]
    spec = deployment["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    scorer = container(deployment)
    assert init["command"] == ["moderation"] and init["args"][:2] == ["export", env(deployment)["MODERATION_CLIP_MODEL_DIR"]]
    init_env = {e["name"]: e.get("value") for e in init.get("env", [])}
    for name, value in env(deployment).items():
        if name.startswith(("MODERATION_CLIP_", "MODERATION_WEIGHTS_", "MODERATION_ALLOW_DOWNLOADS")) and name != "MODERATION_CLIP_MODEL_DIR":
            assert init_env.get(name) == value, f"{overlay}: the init container must export what the scorer would load: {name}"
    mounts = {m["name"]: m for m in scorer["volumeMounts"]}
    init_mounts = {m["name"]: m for m in init["volumeMounts"]}
    assert mounts["model"].get("readOnly") and not init_mounts["model"].get("readOnly")
    assert mounts["model"]["mountPath"] == init_mounts["model"]["mountPath"]
    assert init["securityContext"]["readOnlyRootFilesystem"] and init["resources"]["limits"]["memory"]
    if overlay == "prod":
        assert init_mounts["models"]["readOnly"] and init_env["MODERATION_WEIGHTS_CACHE"] == "/models"


def test_the_dev_overlays_init_container_and_scorer_commands_work_together(rendered: dict[str, list[dict]], tmp_path: Path) -> None:
    """Run the dev overlay's init container command line, then the scorer on its folder, with their env (tiny model, paths here)."""
    import os
    import sys

    from tests.conftest import TINY_CLIP
    from tests.integration.server import running_server

    deployment = by_kind(rendered["dev"], "Deployment")["moderation-scorer"]
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    here = {"/model": str(tmp_path / "model"), "/etc/moderation/policies": str(POLICIES)}

    def local(value: str) -> str:
        for mount, path in here.items():
            value = value.replace(mount, path)
        return value

    (tmp_path / "model").mkdir()
    tiny = {"MODERATION_CLIP_MODEL": f"local-dir:{TINY_CLIP}", "MODERATION_LOG_FORMAT": "text"}
    init_env = {e["name"]: local(e["value"]) for e in init["env"]} | tiny
    exported = subprocess.run(
        [sys.executable, "-m", "moderation", *(local(a) for a in init["args"])],
        env={**os.environ, **init_env}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr[-3000:]
    scorer_env = {name: local(value) for name, value in env(deployment).items() if value is not None and name.startswith("MODERATION_CLIP")}
    with running_server(tmp_path, "--policies", str(POLICIES), env={**scorer_env, **tiny}) as server:
        log = server.log_text()
    assert f"CLIP model folder {tmp_path / 'model' / 'clip'}: " in log, log[-2000:]
    assert "holds RANDOM WEIGHTS" in log, "the dev overlay's random weights went into the folder"
