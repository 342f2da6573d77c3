"""The repository as a Zeek package, installed the way users install it: ``zkg install`` of a clone into a
throwaway zkg state (its own config file and directories, no package source, no network). zkg runs the
package's ``test_command`` (the btest suite, on the real Zeek) before installing; ``zkg test dpack`` runs it
again; a ``local.zeek`` with ``@load packages`` then loads dpack and ``zeek -r`` ends with the trace."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import zeeklab
from conftest import ROOT, need


def _snapshot(dest: Path) -> Path:
    """The working tree (tracked files and untracked ones git does not ignore) as a fresh git repository:
    zkg installs from git, and this tests what is here, committed or not."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for f in filter(None, files):
        src = ROOT / f.decode()
        if src.is_file():
            (dest / f.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f.decode())
    git = [
        "git",
        "-c",
        "user.name=dpack-test",
        "-c",
        "user.email=test@invalid",
        "-c",
        "init.defaultBranch=main",
    ]
    for argv in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run([*git, *argv], cwd=dest, check=True, capture_output=True)
    return dest


def test_zkg_installs_tests_and_loads_the_package(zeek, tmp_path):
    zkg = shutil.which("zkg") or str(Path(sys.executable).with_name("zkg"))
    if not Path(zkg).exists():
        need("zkg is not installed (pip install zkg; the test extras have it)")
    repo = _snapshot(tmp_path / "dpack")
    cfg = tmp_path / "zkg.cfg"
    cfg.write_text(
        "[sources]\n[paths]\n"
        + "".join(f"{k} = {tmp_path / k}\n" for k in ("state_dir", "script_dir", "plugin_dir", "bin_dir"))
    )

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [zkg, "--configfile", str(cfg), *argv], capture_output=True, text=True, timeout=900
        )
        assert r.returncode == 0, r.stdout + r.stderr
        return r

    out = run("install", "--force", str(repo)).stdout
    assert 'Running unit tests for "' in out and 'Installed "' in out, out
    assert "all tests passed" in run("test", str(repo)).stdout  # (zkg names a local package by its path)
    assert (tmp_path / "script_dir" / "packages" / "dpack" / "__load__.zeek").exists()
    site = tmp_path / "site"
    site.mkdir()
    (site / "local.zeek").write_text(
        '@load packages\nevent zeek_init() { print fmt("dpack contract %d", DPack::contract_version); }\n'
    )
    env = zeeklab.zeek_env(tmp_path / "script_dir")
    trace = ROOT / "tests" / "btest" / "Traces" / "mixed.pcap"
    r = subprocess.run(
        ["zeek", "-C", "-r", str(trace), "local.zeek"],
        cwd=site,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    from dpack.zeek import contract

    assert f"dpack contract {contract.CONTRACT_VERSION}" in r.stdout
    assert len(zeeklab.read_zeek_log(site / "conn.log")) == 4
