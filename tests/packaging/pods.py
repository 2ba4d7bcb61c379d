"""The chart's pods as the kubelet would run them, from the rendered manifests, on this machine.

What a container gets is read from the render only: its command/args (the image's ENTRYPOINT when it
has none), the image's ENV overlaid by its rendered ``env`` (``value``, ``secretKeyRef`` and
``configMapKeyRef`` resolved against the rendered Secrets and ConfigMaps and the operator's own, Secret
data base64-decoded; ``envFrom``), its pod's ``runAsUser``/``runAsGroup``, ``readOnlyRootFilesystem``
and its ``volumeMounts`` (emptyDir: a tmpfs of its ``sizeLimit``; Secret/ConfigMap: its keys as
read-only files). tests/packaging/podlaunch.py builds that view in a private mount namespace.

What cannot be as in a cluster is rewritten, and only that (:data:`REWRITES`, each with its reason).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.packaging.images import image_chain, log_text, service_stages, stop_gracefully
from tests.packaging.support import NAMESPACE, Obj, pod_spec

LAUNCHER = Path(__file__).with_name("podlaunch.py")

#: Every difference between a container here and in a cluster, with why it cannot be avoided.
REWRITES = {
    "BIND_HOST": ":: (every address) is the pod's own network namespace in a cluster; here the machine's, "
    "where other tests listen: each pod binds its own loopback address instead (a Service's ClusterIP "
    "and the pod's IP in one), on the rendered ports",
    "/etc/hosts": "no cluster DNS: each Service name (short, .<namespace>, .svc, .svc.cluster.local) "
    "resolves to its pod's loopback address, the external database's host to the test Postgres",
    "interpreter": "the runtime venv's base Python lives under /root (0700) here, in a world-readable "
    "/usr/local in the image: that one directory is shown readable in the container's view",
}


def decoded(obj: Obj) -> dict[str, str]:
    """A Secret's or ConfigMap's data as text."""
    if obj["kind"] == "Secret":
        data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        data.update(obj.get("stringData") or {})
        return data
    return dict(obj.get("data") or {})


class Cluster:
    """The objects a render creates plus those the operator created beforehand (existingSecret)."""

    def __init__(self, objects: list[Obj], operator: list[Obj]) -> None:
        self.objects = objects
        self.stores = {
            (o["kind"], o["metadata"]["name"]): decoded(o)
            for o in [*objects, *operator]
            if o["kind"] in {"Secret", "ConfigMap"}
        }

    def key(self, kind: str, ref: Obj) -> str | None:
        store = self.stores.get((kind, ref["name"]))
        if store is None or ref["key"] not in store:
            # the kubelet refuses to start the container (CreateContainerConfigError) unless optional
            assert ref.get("optional"), f"{kind} {ref['name']} has no key {ref['key']}"
            return None
        return store[ref["key"]]

    def env(self, container: Obj) -> dict[str, str]:
        """The container's rendered environment, resolved (envFrom first, env wins, as the kubelet)."""
        out: dict[str, str] = {}
        for source in container.get("envFrom", []):
            kind, ref = (
                ("Secret", source["secretRef"])
                if "secretRef" in source
                else ("ConfigMap", source["configMapRef"])
            )
            store = self.stores.get((kind, ref["name"]))
            assert store is not None or ref.get("optional"), f"envFrom: no {kind} {ref['name']}"
            out.update({source.get("prefix", "") + k: v for k, v in (store or {}).items()})
        for item in container.get("env", []):
            if "value" in item:
                assert "$(" not in str(item["value"]), item  # no dependent variables in this chart
                out[item["name"]] = str(item["value"])
                continue
            source = item["valueFrom"]
            if "secretKeyRef" in source:
                value = self.key("Secret", source["secretKeyRef"])
            elif "configMapKeyRef" in source:
                value = self.key("ConfigMap", source["configMapKeyRef"])
            else:
                raise AssertionError(f"unsupported valueFrom {source}")
            if value is not None:
                out[item["name"]] = value
        return out

    def find(self, kind: str, name: str) -> Obj:
        (obj,) = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        return obj


def image_service(container: Obj) -> str:
    """Which service image a container runs (…/timesheets-<service>:tag)."""
    match = re.search(r"timesheets-(gateway|identity|timesheets|approvals|audit)[:@]", container["image"])
    assert match, container["image"]
    return match.group(1)


def image_entrypoint(service: str) -> list[str]:
    for word, args in service_stages(service)[f"service-{service}"]:
        if word == "ENTRYPOINT":
            return list(json.loads(args))
    raise AssertionError(f"no ENTRYPOINT for {service}")


def image_env(service: str) -> dict[str, str]:
    """The image's ENV as the container starts with it (the base image's PATH for $PATH)."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    for stage in image_chain(service):
        for word, args in stage:
            if word == "ENV":
                for pair in args.split():
                    name, _, value = pair.partition("=")
                    env[name] = value.replace("$PATH", env["PATH"])
    return env


def image_workdir(service: str) -> str:
    workdir = "/"
    for stage in image_chain(service):
        for word, args in stage:
            if word == "WORKDIR":
                workdir = args
    return workdir


def tmpfs_size(quantity: str) -> str:
    """A Kubernetes quantity (64Mi) as a tmpfs size (bytes)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity)
    assert match, quantity
    return str(int(match.group(1)) * units.get(match.group(2), 1))


@dataclass
class Container:
    """One container of a rendered pod, ready to be launched (:meth:`launch`)."""

    name: str
    service: str
    argv: list[str]
    env: dict[str, str]
    uid: int
    gid: int
    mounts: list[dict[str, Any]]
    workdir: str
    rewrites: dict[str, str] = field(default_factory=dict)
    #: the rendered ``resources`` (requests, limits), applied only when :attr:`cgroups` are given
    resources: dict[str, Any] = field(default_factory=dict)
    #: cgroup.procs files the container joins before it starts (testkit.cgroups: its limits)
    cgroups: list[str] = field(default_factory=list)

    def spec(self, root: Path, image_mounts: list[dict[str, Any]], hosts: Path) -> dict[str, Any]:
        readable = [sys.base_prefix] if sys.base_prefix.startswith("/root/") else []
        return {
            "root": str(root),
            "readable": readable,
            "mounts": [
                *image_mounts,
                *self.mounts,
                {"kind": "file", "path": "/etc/hosts", "source": str(hosts)},
            ],
            "uid": self.uid,
            "gid": self.gid,
            "workingDir": self.workdir,
            "argv": self.argv,
            "env": self.env,
            "cgroups": self.cgroups,
        }


def containers_of(cluster: Cluster, workload: Obj, staging: Path) -> list[Container]:
    """The init containers then the containers of a Deployment's, a Job's or a Pod's pod spec."""
    pod = pod_spec(workload)
    assert pod is not None, workload["kind"]
    security = pod.get("securityContext", {})
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    out = []
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        service = image_service(container)
        context = {**security, **container.get("securityContext", {})}
        assert context.get("readOnlyRootFilesystem") is True, container["name"]
        uid, gid = int(context["runAsUser"]), int(context["runAsGroup"])
        assert uid != 0, container["name"]
        assert gid != 0, container["name"]
        command = container.get("command") or image_entrypoint(service)
        mounts = []
        for mount in container.get("volumeMounts", []):
            assert "subPath" not in mount, mount
            volume = volumes[mount["name"]]
            if "emptyDir" in volume:
                limit = volume["emptyDir"].get("sizeLimit")
                assert limit, f"emptyDir {mount['name']} without sizeLimit"
                mounts.append({"kind": "tmpfs", "path": mount["mountPath"], "size": tmpfs_size(limit)})
            elif "configMap" in volume or "secret" in volume:
                kind, ref = (
                    ("ConfigMap", volume["configMap"])
                    if "configMap" in volume
                    else ("Secret", volume["secret"])
                )
                name = ref.get("name") or ref.get("secretName")
                store = cluster.stores[(kind, name)]
                items = ref.get("items") or [{"key": k, "path": k} for k in store]
                folder = staging / f"vol-{workload['metadata']['name']}-{mount['name']}"
                folder.mkdir(mode=0o755, exist_ok=True)
                for item in items:
                    (folder / item["path"]).write_text(store[item["key"]])
                    (folder / item["path"]).chmod(ref.get("defaultMode", 0o644))
                mounts.append({"kind": "dir", "path": mount["mountPath"], "source": str(folder)})
            else:
                raise AssertionError(f"unsupported volume {volume}")
        out.append(
            Container(
                name=container["name"],
                service=service,
                argv=[*command, *container.get("args", [])],
                env={**image_env(service), **cluster.env(container)},
                uid=uid,
                gid=gid,
                mounts=mounts,
                workdir=container.get("workingDir") or image_workdir(service),
                resources=container.get("resources", {}),
            )
        )
    return out


def hosts_file(path: Path, names: dict[str, str]) -> Path:
    """The pods' /etc/hosts: every name given, and each Service's in-cluster DNS forms."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    for name, address in names.items():
        lines.append(f"{address}\t{name}")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)
    return path


def service_names(name: str) -> list[str]:
    return [name, f"{name}.{NAMESPACE}", f"{name}.{NAMESPACE}.svc", f"{name}.{NAMESPACE}.svc.cluster.local"]


class PodProcess:
    """A container started by podlaunch.py in its own mount namespace (the pid is the service's)."""

    def __init__(self, container: Container, spec: dict[str, Any], staging: Path) -> None:
        self.container = container
        self.spec_file = staging / f"spec-{container.name}.json"
        self.spec_file.write_text(json.dumps(spec))
        self.log = staging / f"{container.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PodProcess:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    sys.executable,
                    str(LAUNCHER),
                    str(self.spec_file),
                ],
                stdout=log,
                stderr=log,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
        return self

    @property
    def pid(self) -> int:
        """The container's process (podlaunch.py execs into it)."""
        assert self.process is not None
        return self.process.pid

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def logs(self) -> str:
        return log_text(self.log)

    def stop(self) -> None:
        stop_gracefully(self.process)


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() > deadline:
            assert result, f"timed out waiting for {what}"
            return result
        time.sleep(interval)


def url_host(url: str) -> str:
    return urlsplit(url).hostname or ""
