"""scripts/system-packages, which `make test`, `make demo` and `make bench` run first: run as a
subprocess with a PATH of stand-ins, so nothing is installed or removed for real. `apt-get` is
a stand-in that records how it was called and "installs" by creating the missing commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "scripts" / "system-packages"
BASH = shutil.which("bash") or "/bin/bash"
CHMOD = shutil.which("chmod") or "/bin/chmod"
TEST_NEEDS = [
    "python-venv=python3-venv",
    "promtool=prometheus",
    "prometheus=prometheus",
    "prometheus-alertmanager=prometheus-alertmanager",
]
# Which commands each package brings, for the apt-get stand-in.
PROVIDES = {
    "prometheus": ["promtool", "prometheus"],
    "prometheus-alertmanager": ["prometheus-alertmanager"],
    "wrk": ["wrk"],
}
APT_GET = """#!{bash}
# Stand-in: records its calls; `install` creates the packages' commands (if told to).
echo "DEBIAN_FRONTEND=${{DEBIAN_FRONTEND:-}} $*" >> {log}
[ "$1" = install ] || exit 0
[ -e {broken} ] && exit 0
for arg in "$@"; do
  case "$arg" in
{cases}
  esac
done
"""


@dataclass
class Machine:
    """A PATH directory of stand-in commands, and what apt-get was asked to do."""

    bin: Path
    apt_log: Path

    def add(self, *commands: str, code: int = 0) -> None:
        for name in commands:
            path = self.bin / name
            path.write_text(f"#!{BASH}\nexit {code}\n")
            path.chmod(0o755)

    def remove(self, *commands: str) -> None:
        for name in commands:
            (self.bin / name).unlink()

    def apt_calls(self) -> list[str]:
        return self.apt_log.read_text().splitlines() if self.apt_log.exists() else []

    def break_apt(self) -> None:
        """apt-get succeeds but brings nothing (a package that lacks the command)."""
        (self.bin.parent / "apt-broken").touch()

    def run(
        self, *needs: str, uid: int | None, python: str = sys.executable
    ) -> subprocess.CompletedProcess[str]:
        env = {"PATH": str(self.bin), "PYTHON": python, "LANG": "C.UTF-8"}
        if uid is not None:
            env["SYSTEM_PACKAGES_UID"] = str(uid)
        return subprocess.run(
            [BASH, str(SCRIPT), *needs], env=env, capture_output=True, text=True, timeout=30
        )


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    """Everything `make test` needs is present, and apt-get is the stand-in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    m = Machine(bin_dir, tmp_path / "apt.log")
    cases = "\n".join(
        f"    {package}) for c in {' '.join(commands)}; do "
        f"printf '#!{BASH}\\n' > {bin_dir}/$c; {CHMOD} 755 {bin_dir}/$c; done ;;"
        for package, commands in PROVIDES.items()
    )
    apt = APT_GET.format(bash=BASH, log=m.apt_log, broken=tmp_path / "apt-broken", cases=cases)
    (bin_dir / "apt-get").write_text(apt)
    (bin_dir / "apt-get").chmod(0o755)
    m.add("promtool", "prometheus", "prometheus-alertmanager")
    return m


@pytest.mark.parametrize("uid", [0, 1000])
def test_everything_present_installs_nothing(machine: Machine, uid: int) -> None:
    done = machine.run(*TEST_NEEDS, uid=uid)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert machine.apt_calls() == []


@pytest.mark.parametrize(
    ("gone", "needs", "packages"),
    [
        (["prometheus-alertmanager"], TEST_NEEDS, "prometheus-alertmanager"),
        # Two commands of one package: the package is named once.
        (["promtool", "prometheus"], TEST_NEEDS, "prometheus"),
        (
            ["promtool", "prometheus-alertmanager"],
            TEST_NEEDS,
            "prometheus prometheus-alertmanager",
        ),
        ([], [*TEST_NEEDS, "wrk=wrk"], "wrk"),
    ],
)
def test_missing_and_not_root_is_one_line_naming_the_command(
    machine: Machine, gone: list[str], needs: list[str], packages: str
) -> None:
    machine.remove(*gone)
    done = machine.run(*needs, uid=1000)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"missing Debian packages: {packages}; run: sudo apt-get install {packages}"
    ]
    assert machine.apt_calls() == []


def test_a_python_that_cannot_make_venvs_needs_python3_venv(machine: Machine) -> None:
    machine.add("no-ensurepip", code=1)  # what `python3 -c "import ensurepip, venv"` does then
    done = machine.run(*TEST_NEEDS, uid=1000, python=str(machine.bin / "no-ensurepip"))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "missing Debian packages: python3-venv; run: sudo apt-get install python3-venv"
    ]


def test_as_root_installs_only_what_is_missing(machine: Machine) -> None:
    machine.remove("promtool", "prometheus-alertmanager")
    done = machine.run(*TEST_NEEDS, uid=0)
    assert done.returncode == 0, done.stderr
    assert machine.apt_calls() == [
        "DEBIAN_FRONTEND=noninteractive update -qq",
        "DEBIAN_FRONTEND=noninteractive install -y -qq --no-install-recommends "
        "prometheus prometheus-alertmanager",
    ]
    assert machine.run(*TEST_NEEDS, uid=0).returncode == 0
    assert len(machine.apt_calls()) == 2  # present now: not installed again


def test_as_root_a_command_still_missing_after_install_fails(machine: Machine) -> None:
    machine.remove("prometheus-alertmanager")
    machine.break_apt()
    done = machine.run(*TEST_NEEDS, uid=0)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith(
        "still missing after apt-get install: prometheus-alertmanager"
    )


def test_a_malformed_need_is_refused(machine: Machine) -> None:
    done = machine.run("promtool", uid=1000)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "system-packages: 'promtool' is not CHECK=PACKAGE (e.g. promtool=prometheus)"
    ]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)
def test_the_real_user_id_decides_by_default() -> None:
    """No override: a real non-root user (nobody) is told, not given an install."""
    done = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", BASH, str(SCRIPT),
         "vigil-test-no-such-command=vigil-test-package"],
        env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        "missing Debian packages: vigil-test-package; run: sudo apt-get install vigil-test-package"
    ]


@pytest.mark.parametrize("target", ["test", "demo"])
def test_make_stops_before_the_venv_with_that_line(
    machine: Machine, tmp_path: Path, target: str
) -> None:
    """`make test` and `make demo` check first: nothing is built or run when a package is
    missing."""
    make = shutil.which("make")
    assert make is not None, "make runs this suite (`make test`; .ci/run installs it)"
    for tool in (make, BASH):
        (machine.bin / Path(tool).name).symlink_to(tool)
    machine.add("chromium")  # `make test` also checks for it (the page's tests)
    machine.remove("prometheus-alertmanager")
    env = {"PATH": str(machine.bin), "SYSTEM_PACKAGES_UID": "1000", "LANG": "C.UTF-8"}
    done = subprocess.run(
        [make, "--no-print-directory", "-C", str(ROOT), target, f"PYTHON={sys.executable}",
         f"VENV={tmp_path / 'venv'}"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stdout == ""  # no venv built, nothing run
    assert done.stderr.splitlines()[0] == (
        "missing Debian packages: prometheus-alertmanager; "
        "run: sudo apt-get install prometheus-alertmanager"
    )
    assert not (tmp_path / "venv").exists()
