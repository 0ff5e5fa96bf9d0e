"""The image runs what docker-compose.yml starts, checked without a Docker engine.

The Dockerfile's build stage is replayed here step by step: its ENV, WORKDIR, COPY (honouring
.dockerignore) and RUN instructions, with its container paths under a tmp folder, so the
requirements it derives from pyproject.toml are installed by its own `pip install` lines into a
fresh virtualenv (`python -m venv`, as the image makes). Two liberties, neither changing what is
installed: system packages (`apt-get`) are this machine's, and pip may use its wheel cache.

Then, from outside the sources, each project service of the compose file must parse its command
with the installed `rakshit`, import every module its command's branch of `streams/cli.py`
loads, and load no system library that the runtime stage's slim base lacks and does not
install; and every third-party module the installed code imports anywhere must be there, under
the same check. Dropping the `ml` extra from the Dockerfile fails here (the worker imports
LightGBM and river), and so does dropping `libgomp1` from its runtime stage.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
PACKAGES = ("streams", "agents", "scoring", "schemas", "infra")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

# What python:3.11-slim (Debian bookworm) holds without installing anything: glibc, the C++
# runtime apt itself links, and the libraries CPython's own modules link. Anything else a
# service loads from the system must be installed by the runtime stage.
SLIM_LIBRARIES = (
    "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1", "libc.so.6", "libm.so.6", "libdl.so.2",
    "libpthread.so.0", "librt.so.1", "libresolv.so.2", "libutil.so.1", "libgcc_s.so.1",
    "libstdc++.so.6", "libz.so.1", "libbz2.so.1", "liblzma.so.5", "libffi.so.8",
    "libssl.so.3", "libcrypto.so.3", "libsqlite3.so.0", "libuuid.so.1", "libexpat.so.1",
    "libncursesw.so.6", "libtinfo.so.6", "libreadline.so.8",
)
# Not passed to the replay: this test's own interpreter's settings, and the image's no-cache
# setting (a wheel cache changes how fast pip installs, not what).
NOT_PASSED = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV",
              "PIP_NO_CACHE_DIR")


# ---------------------------------------------------------------------------------------------
# reading the Dockerfile


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuations joined, comments dropped."""
    joined = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions by its name (FROM ... AS name)."""
    named: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for word, rest in instructions(text):
        if word == "FROM":
            current = []
            named[rest.split()[-1] if " AS " in rest.upper() else str(len(named))] = current
        else:
            current.append((word, rest))
    return named


def final_stage(text: str) -> tuple[str, list[tuple[str, str]]]:
    return list(stages(text).items())[-1]


def built_from(text: str) -> list[str]:
    """The stages the final stage copies from (the image's build)."""
    _, steps = final_stage(text)
    return [m.group(1) for word, rest in steps if word == "COPY"
            for m in [re.match(r"--from=(\S+)", rest)] if m]


def runtime_packages(text: str) -> list[str]:
    """Debian packages the final stage installs."""
    _, steps = final_stage(text)
    packages: list[str] = []
    for word, rest in steps:
        if word == "RUN":
            for command in rest.split("&&"):
                tokens = shlex.split(command)
                if tokens[:2] == ["apt-get", "install"]:
                    packages += [t for t in tokens[2:] if not t.startswith("-")]
    return packages


def soname(package: str) -> str | None:
    """Debian's naming rule for a shared-library package: libfoo1 ships libfoo.so.1."""
    match = re.fullmatch(r"(lib[a-z0-9+_.-]*?[a-z+_])(\d+)", package)
    return f"{match.group(1)}.so.{match.group(2)}" if match else None


# ---------------------------------------------------------------------------------------------
# replaying the build stage


def _ignored(rel: str, patterns: list[str]) -> bool:
    def matches(path: str, pattern: str) -> bool:
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
        return re.fullmatch(regex, path) is not None or fnmatch.fnmatch(path, pattern)

    parts = rel.split("/")
    return any(matches("/".join(parts[:i]), p) for i in range(1, len(parts) + 1)
               for p in patterns)


def copy_context(dest: Path) -> None:
    """`COPY . .`: the build context minus .dockerignore."""
    patterns = [line.strip().rstrip("/") for line in
                (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = Path(dirpath).relative_to(ROOT).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = [d for d in dirnames if not _ignored(prefix + d, patterns)]
        for name in filenames:
            if not _ignored(prefix + name, patterns):
                target = dest / prefix / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(dirpath) / name, target)


@dataclass
class Replay:
    """A build stage's steps run on this machine with its container paths under ``root``."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = Path("/")
    log: list[str] = field(default_factory=list)
    mapped: tuple[str, ...] = ("/tmp",)

    def host(self, text: str) -> str:
        pattern = "|".join(re.escape(p) for p in sorted(self.mapped, key=len, reverse=True))
        return re.sub(rf"(?<![\w./-])({pattern})(?=[/\s\"':;]|$)",
                      lambda m: str(self.root) + m.group(1), text)

    def run(self, word: str, rest: str) -> None:
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                value = value.replace("${PATH}", "$PATH").replace("$PATH", self.env["PATH"])
                if key not in NOT_PASSED:
                    self.env[key] = self.host(value)
        elif word == "WORKDIR":
            self.mapped += (rest,)
            self.cwd = Path(self.host(rest))
            self.cwd.mkdir(parents=True, exist_ok=True)
        elif word == "COPY":
            *sources, dest = shlex.split(rest)
            target = self.cwd / dest if not dest.startswith("/") else Path(self.host(dest))
            for source in sources:
                if source == ".":
                    copy_context(target)
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / source, target / Path(source).name)
        elif word == "RUN":
            if rest.startswith("apt-get"):
                return  # system packages: this machine's
            venv = re.search(r"python -m venv (\S+)", rest)
            if venv:
                self.mapped += (venv.group(1),)
            command = self.host(rest)
            self.log.append(command)
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=self.cwd,
                                  env=self.env, capture_output=True, text=True, check=False)
            assert done.returncode == 0, (
                f"RUN {rest}\n(as {command})\nexit {done.returncode}\n"
                f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")


def base_python(shims: Path) -> Path:
    """A `python` that is the interpreter itself, not this test's virtualenv (the image's
    python:3.11 is a system interpreter)."""
    shims.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    (shims / "python").symlink_to(exe if exe.exists() else Path(sys.executable))
    return shims


@dataclass(frozen=True)
class Image:
    venv: Path
    env: dict[str, str]
    outside: Path

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.venv / "bin" / "python"), "-c", code], cwd=self.outside,
                              env=self.env, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    text = DOCKERFILE.read_text()
    build = built_from(text)
    assert build, "the final stage copies nothing from a build stage"
    root = tmp_path_factory.mktemp("image")
    (root / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in NOT_PASSED}
    env["PATH"] = f"{base_python(root / 'shims')}:{env.get('PATH', '/usr/bin:/bin')}"
    replay = Replay(root, env)
    for name in build:
        for word, rest in stages(text)[name]:
            replay.run(word, rest)
    venvs = [m for m in replay.mapped if (Path(replay.host(m)) / "pyvenv.cfg").is_file()]
    assert venvs, f"no `python -m venv` in the build stage: {replay.log}"
    outside = root / "outside"
    outside.mkdir()
    return Image(Path(replay.host(venvs[0])), replay.env, outside)


# ---------------------------------------------------------------------------------------------
# what each service loads


def project_services() -> dict[str, list[str]]:
    """Compose services built from this repository, with their commands."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    return {name: svc["command"] for name, svc in services.items() if "build" in svc}


def command_imports(command: str) -> list[str]:
    """Modules `streams/cli.py` imports in the branch that runs ``command``."""
    tree = ast.parse((ROOT / "streams" / "cli.py").read_text())
    modules: list[str] = ["streams.cli"]
    for node in ast.walk(tree):
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                and ast.unparse(node.test.left) == "args.command"
                and isinstance(node.test.comparators[0], ast.Constant)
                and node.test.comparators[0].value == command):
            for inner in (n for stmt in node.body for n in ast.walk(stmt)):
                if isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
                    modules.append(inner.module)
                elif isinstance(inner, ast.Import):
                    modules += [alias.name for alias in inner.names]
    return sorted(set(modules))


def third_party_imports(package_dirs: list[Path]) -> list[str]:
    """Top-level modules outside the standard library and the project that any module of the
    given packages imports, at the top or inside a function."""
    names: set[str] = set()
    for pkg in package_dirs:
        for path in pkg.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module.split(".")[0])
    return sorted(names - set(sys.stdlib_module_names) - set(PACKAGES) - {"__future__"})


PROBE = """
import importlib, json, sys
modules = {modules!r}
for name in modules:
    importlib.import_module(name)
libs = set()
with open("/proc/self/maps") as maps:
    for line in maps:
        parts = line.split()
        if len(parts) >= 6 and ".so" in parts[5]:
            libs.add(parts[5])
print(json.dumps({{"files": {{m: getattr(sys.modules[m], "__file__", None) for m in modules}},
                  "libs": sorted(libs), "base_prefix": sys.base_prefix}}))
"""


def probe(image: Image, modules: list[str]) -> dict[str, Any]:
    done = image.python(PROBE.format(modules=modules))
    assert done.returncode == 0, f"importing {modules} in the image failed:\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def missing_system_libraries(image: Image, loaded: dict[str, Any]) -> list[str]:
    """Libraries a probe loaded from the system that the runtime stage would not have."""
    allowed = set(SLIM_LIBRARIES) | {s for p in runtime_packages(DOCKERFILE.read_text())
                                     if (s := soname(p))}
    own = (str(image.venv), loaded["base_prefix"])
    system = {Path(lib).name for lib in loaded["libs"] if not lib.startswith(own)}
    return sorted(lib for lib in system
                  if not any(lib == a or lib.startswith(a + ".") for a in allowed))


# ---------------------------------------------------------------------------------------------
# the tests


def test_the_image_installs_the_ml_extra_beside_the_core_dependencies() -> None:
    text = DOCKERFILE.read_text()
    runs = " ".join(rest for name in built_from(text) for word, rest in stages(text)[name]
                    if word == "RUN")
    assert "['optional-dependencies']['ml']" in runs and "['dependencies']" in runs


def test_the_rules_this_replay_reads_the_dockerfile_by() -> None:
    assert soname("libgomp1") == "libgomp.so.1"
    assert soname("libstdc++6") == "libstdc++.so.6"
    assert soname("build-essential") is None
    assert _ignored(".venv/bin/python", [".venv"])
    assert _ignored("streams/__pycache__/x.pyc", ["**/__pycache__"])
    assert not _ignored("streams/cli.py", [".venv", "**/__pycache__", "*.egg-info"])
    assert command_imports("worker") == ["dataclasses", "logging", "streams.admin",
                                         "streams.bench.passthrough", "streams.cli",
                                         "streams.launcher", "streams.worker.app"]


@pytest.mark.parametrize(("service", "command"), sorted(project_services().items()))
def test_each_service_command_runs_its_imports_in_the_image(
        image: Image, service: str, command: list[str]) -> None:
    assert command[0] == "rakshit", f"{service}: {command}"
    done = subprocess.run([str(image.venv / "bin" / "rakshit"), *command[1:], "--help"],
                          cwd=image.outside, env=image.env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, f"{service}: {' '.join(command)} --help\n{done.stderr}"
    modules = command_imports(command[1])
    assert len(modules) > 1, f"{service}: no branch of streams/cli.py runs {command[1]!r}"
    loaded = probe(image, modules)
    for module, path in loaded["files"].items():  # the installed project, not the sources
        if module.split(".")[0] in PACKAGES:
            assert path and Path(path).is_relative_to(image.venv), (service, module, path)
    missing = missing_system_libraries(image, loaded)
    assert not missing, (f"{service} loads {missing} from the system: neither python:3.11-slim "
                         "nor the Dockerfile's runtime stage provides them")


def test_every_module_the_installed_code_imports_is_installed(image: Image) -> None:
    site = probe(image, ["streams"])["files"]["streams"]
    packages = [Path(site).parent.parent / name for name in PACKAGES]
    assert all(p.is_dir() for p in packages), packages
    wanted = third_party_imports(packages)
    assert {"lightgbm", "river", "pandas", "confluent_kafka", "faust"} <= set(wanted)
    done = image.python("import importlib, sys\n"
                         f"for name in {wanted!r}:\n"
                         "    try:\n"
                         "        importlib.import_module(name)\n"
                         "    except ImportError as exc:\n"
                         "        print(name, exc)\n")
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr
    missing = missing_system_libraries(image, probe(image, wanted))
    assert not missing, (f"the installed code's imports load {missing} from the system: neither "
                         "python:3.11-slim nor the Dockerfile's runtime stage provides them")
