"""The Vagrantfile parses (ruby -c), validates (vagrant validate) and provisions with valid sh."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, require

pytestmark = pytest.mark.freebsd
VAGRANTFILE = REPO / "Vagrantfile"
# Loads the Vagrantfile with a Vagrant.configure that does nothing and prints the provisioning
# script: exactly the string Ruby hands to the guest's shell.
PRINT_PROVISION = (
    'module Vagrant; def self.configure(*); end; end; load ARGV[0]; print PROVISION'
)


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"{name} (apt-get install {package})")
    assert path is not None
    return path


def test_ruby_syntax() -> None:
    out = subprocess.run([tool("ruby", "ruby"), "-c", str(VAGRANTFILE)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Syntax OK"


@pytest.fixture
def provision_script(tmp_path: Path) -> Path:
    out = subprocess.run([tool("ruby", "ruby"), "-e", PRINT_PROVISION, str(VAGRANTFILE)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    script = tmp_path / "provision.sh"
    script.write_text(out.stdout)
    return script


@pytest.mark.parametrize("shell", ["dash", "bash"])
def test_provisioning_script_parses(provision_script: Path, shell: str) -> None:
    out = subprocess.run([tool(shell, shell), "-n", str(provision_script)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_provisioning_sets_up_what_jetpack_needs(provision_script: Path) -> None:
    text = provision_script.read_text()
    for package in ("python311", "py311-pip", "py311-sqlite3", "gnupg"):
        assert package in text, package
    assert "libzfs" not in text  # jetpack drives zfs(8); no Python binding is installed
    assert 'sysrc -q cloned_interfaces+="lo1"' in text
    assert 'sysrc -q ifconfig_lo1="inet 172.23.0.1/16"' in text
    for anchor in ('nat-anchor "jetpack/*"', 'rdr-anchor "jetpack/*"', 'anchor "jetpack/*"'):
        assert anchor in text
    assert r"nat on \$ext_if inet from \$jetpack_net" in text
    assert "python3.11 -m pip install -q --upgrade /vagrant" in text
    assert "make -C /vagrant install PREFIX=/usr/local" in text
    assert "jetpack init" in text
    assert "sysrc -q jetpack_enable=YES" in text
    assert "service jetpack start" in text


def test_box_is_a_supported_freebsd_14() -> None:
    # 14.1 reached its end of life on 2025-09-30; 14.3 is supported.
    assert 'ENV.fetch("JETPACK_BOX", "freebsd/FreeBSD-14.3-RELEASE")' in VAGRANTFILE.read_text()


def test_provisioning_enables_racct_and_says_how_to_reboot(provision_script: Path) -> None:
    text = provision_script.read_text()
    assert "sysrc -q -f /boot/loader.conf kern.racct.enable=1" in text
    lines = text.splitlines()
    # The service and the smoke pod come only once racct is live (doctor would refuse them).
    gate = lines.index('if [ "$(sysctl -n kern.racct.enable)" != 1 ]; then')
    assert "vagrant reload --provision" in "\n".join(lines[gate:gate + 5])
    assert lines.index("jetpack doctor") > gate
    assert "vagrant reload --provision" in VAGRANTFILE.read_text().split("PROVISION =")[0]


def test_pf_conf_does_not_skip_loopback(provision_script: Path) -> None:
    text = provision_script.read_text()
    pf_conf = text[text.index("cat > /etc/pf.conf <<EOF"):]
    pf_conf = pf_conf[:pf_conf.index("\nEOF\n")]
    rules = [line for line in pf_conf.splitlines()[1:] if not line.startswith("#")]
    assert not [line for line in rules if line.startswith("set skip")]
    assert rules.index('nat-anchor "jetpack/*"') < rules.index('anchor "jetpack/*"')


def test_provisioning_builds_the_base_image_and_runs_a_pod(provision_script: Path) -> None:
    lines = provision_script.read_text().splitlines()
    build = next(i for i, line in enumerate(lines)
                 if "sh /vagrant/images/freebsd-base/build.sh" in line)
    imported = lines.index("    jetpack import /var/tmp/jetpack-image/freebsd-base.aci")
    doctor = lines.index("jetpack doctor")
    start = lines.index("    service jetpack start")
    smoke = next(i for i, line in enumerate(lines) if line.startswith("out=$(jetpack run --rm "
                                                                       "jetpack.example/"
                                                                       "freebsd-base"))
    assert build < imported < doctor < start < smoke
    # The image's name is the one images/freebsd-base/manifest.in gives it.
    manifest = (REPO / "images/freebsd-base/manifest.in").read_text()
    assert '"name": "jetpack.example/freebsd-base"' in manifest
    # A smoke pod that prints the wrong thing fails the provisioning.
    assert '*) echo "jetpack: the smoke pod did not print what it should: $out" >&2; exit 1 ;;' \
        in lines


def validate(directory: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VAGRANT_HOME=str(tmp_path / "vagrant.d"), VAGRANT_CHECKPOINT_DISABLE="1")
    # No provider (VirtualBox, libvirt) is installable here: validate the configuration itself.
    return subprocess.run([tool("vagrant", "vagrant"), "validate", "--ignore-provider"],
                          cwd=directory, env=env, capture_output=True, text=True, timeout=300)


def test_vagrant_validate(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(VAGRANTFILE, project / "Vagrantfile")  # vagrant writes .vagrant/ beside it
    out = validate(project, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Vagrantfile validated successfully." in out.stdout

    # The check is live: a misspelt setting fails it.
    broken = project / "Vagrantfile"
    broken.write_text(broken.read_text().replace("config.vm.guest =", "config.vm.guestt ="))
    out = validate(project, tmp_path)
    assert out.returncode != 0
    assert "guestt" in out.stdout + out.stderr
