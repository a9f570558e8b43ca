"""The package's layout by stage: the boot programs stay inside their initramfs, the API is stated once.

The boundary is checked by ``kjumpd.host.closure``, the same function the
initramfs builder and the Debian initramfs hook call.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import kjumpd
from kjumpd import api, errors
from kjumpd.host import closure

PKG = Path(kjumpd.__file__).resolve().parent
DOCS = PKG.parent / "docs"



@pytest.mark.parametrize("program", closure.BOOT_PROGRAMS)
def test_boot_programs_import_neither_the_daemon_nor_the_host(program):
    modules, external = closure.boot_closure(PKG, [program])
    assert program in modules
    assert not [m for m in modules if m.startswith(("kjumpd.daemon", "kjumpd.host"))]
    assert not {m.split(".")[0] for m in external} & {"gi", "pydbus", "pyudev", "systemd"}


def test_a_boot_program_reaching_the_daemon_is_refused(tmp_path):
    """The check fails when it should: a copy of the package whose save program imports the daemon."""
    import shutil

    pkg = tmp_path / "kjumpd"
    shutil.copytree(PKG, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    common = pkg / "boot" / "common.py"
    common.write_text(common.read_text() + "\n\ndef _late():\n    from ..daemon import config  # noqa: F401\n")
    with pytest.raises(closure.BoundaryError, match=r"kjumpd\.boot\.save .*kjumpd\.boot\.common.*kjumpd\.daemon"):
        closure.boot_closure(pkg, ["kjumpd.boot.save"])


def test_the_hook_and_the_builder_use_the_same_check():
    hook = (PKG.parent / "packaging/initramfs-tools/kjumpd-initramfs-files.py").read_text()
    builder = (PKG / "host" / "initramfs.py").read_text()
    assert "closure.boot_closure(" in hook and "closure.boot_closure(" in builder


def _xml_members() -> dict[str, set[str]]:
    interface = ET.fromstring(api.interface_xml()).find(f"interface[@name='{api.INTERFACE}']")
    assert interface is not None
    return {kind: {e.get("name") for e in interface.findall(kind)} for kind in ("method", "property", "signal")}


def test_interface_xml_has_a_comment_on_every_member():
    text = api.interface_xml()
    members = _xml_members()
    for kind, names in members.items():
        for name in names:
            tag = re.search(rf"(<!--(?:(?!-->).)*-->)\s*<{kind} name=\"{name}\"", text, re.S)
            assert tag, f"{kind} {name} has no doc comment right above it"


def test_docs_dbus_md_and_the_xml_agree():
    doc = (DOCS / "dbus.md").read_text()

    def table(heading: str, row: str) -> set[str]:
        section = doc.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
        return set(re.findall(row, section, re.M))

    members = _xml_members()
    assert table("Methods", r"^\| `(\w+)\(") == members["method"]
    assert table("Properties", r"^\| `(\w+)` \| `[^`]+` \|") == members["property"]
    assert table("Signals", r"^\| `(\w+)\(") == members["signal"]


def test_error_names_are_an_explicit_table_and_documented():
    doc = (DOCS / "dbus.md").read_text()
    documented = set(re.findall(r"`(org\.kjump\.Hibernate1\.Error\.\w+)`", doc))
    assert documented == set(api.ERROR_NAMES.values()) | {api.ERROR_FAILED}
    # the names do not follow the classes: a renamed class keeps its public name
    for cls, name in api.ERROR_NAMES.items():
        assert issubclass(cls, errors.KjumpError) and name.startswith(api.ERROR_PREFIX)
