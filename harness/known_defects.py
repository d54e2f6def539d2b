"""Known defects: which scenarios a firmware profile is expected to fail, and why.

A YAML file (scenarios/known_defects.yaml) lists, for one profile, the scenarios its firmware fails
because of a named defect — a quirk switch of `device_emulator.profiles.Quirks`, or `profile.<field>`
for a course requirement the build lacks (e.g. `profile.power_policy`) — with the spec section:

    version: 1
    profile: reference-1.0.4
    defects:
      - scenario: test_remote_config.py::test_applied_after_next_upload_without_reboot
        quirk: config_never_applied_at_runtime
        spec: "§5.3, §11.2.9"
        why: stored in NVS, applied only after a reboot

`scenario` is a module path relative to the file, `::` and a test name (with a `[param]` id to name
one parametrisation, without to name them all); a YAML scenario file and its scenario's name work
the same way. When the suite runs on that profile, each scenario
named is marked `xfail(strict=True)` with the quirk and the section as its reason: the defect showing
is the expected outcome, the scenario passing (a fix, or a scenario that no longer tests anything) fails
the run, and so does any other scenario failing. The file is checked before anything runs: unknown keys,
a quirk that does not exist or is off in that profile, a module that does not exist, or a test name
that is not in its collected module are errors (DocumentError), never silently ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from device_emulator.profiles import PROFILES, Profile, Quirks
from protocol.errors import DocumentError

VERSION = 1
ENTRY_KEYS = frozenset({"scenario", "quirk", "spec", "why"})
FILE_KEYS = frozenset({"version", "profile", "defects"})
SCENARIO_SUFFIXES = (".py", ".yaml", ".yml")  # pytest modules, and the QA scenario files (harness.yaml_plugin)
PROFILE_PREFIX = "profile."


@dataclass(frozen=True)
class KnownDefect:
    module: str  # path relative to the file, "/"-separated
    test: str  # test name, possibly with a parametrisation id
    quirk: str
    spec: str
    why: str

    @property
    def scenario(self) -> str:
        return f"{self.module}::{self.test}"

    def reason(self, profile: str) -> str:
        return f"known defect of {profile}: {self.quirk} (firmware-protocol.md {self.spec}): {self.why}"

    def matches(self, name: str) -> bool:
        """True for the test `name` (pytest's item name, "test_x" or "test_x[id]")."""
        return name == self.test or ("[" not in self.test and name.partition("[")[0] == self.test)


@dataclass(frozen=True)
class KnownDefects:
    profile: str
    defects: tuple[KnownDefect, ...]
    base: Path  # the directory module paths are relative to

    def for_item(self, path: Path, name: str) -> list[KnownDefect]:
        module = _relative(path, self.base)
        return [d for d in self.defects if d.module == module and d.matches(name)]


def _relative(path: Path, base: Path) -> str | None:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return None


def _text(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DocumentError(f"{where}: `{key}` must be non-empty text", value)
    return value.strip()


def _check_quirk(quirk: str, profile: Profile, where: str) -> None:
    if quirk.startswith(PROFILE_PREFIX):
        name = quirk.removeprefix(PROFILE_PREFIX)
        fields = {f.name for f in dataclasses.fields(Profile)} - {"name", "quirks", "timings"}
        if name not in fields:
            raise DocumentError(f"{where}: no profile field {name!r} (known: {', '.join(sorted(fields))})", quirk)
        return
    known = {f.name for f in dataclasses.fields(Quirks)}
    if quirk not in known:
        raise DocumentError(f"{where}: no quirk {quirk!r} in device_emulator.profiles.Quirks", quirk)
    if not getattr(profile.quirks, quirk):
        raise DocumentError(f"{where}: quirk {quirk!r} is off in profile {profile.name}", quirk)


def parse_known_defects(data: bytes | str, base: Path) -> KnownDefects:
    """The known defects in `data` (YAML), module paths relative to `base`; DocumentError if invalid."""
    try:
        doc = yaml.safe_load(data)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError, ValueError) as error:
        raise DocumentError(f"known defects: not YAML: {' '.join(str(error).split())[:200]}", None) from None
    if not isinstance(doc, Mapping):
        raise DocumentError("known defects: the file must be a mapping", type(doc).__name__)
    unknown = sorted(map(str, set(doc) - FILE_KEYS))
    if unknown:
        raise DocumentError(f"known defects: unknown keys {unknown}", unknown)
    if doc.get("version") != VERSION:
        raise DocumentError(f"known defects: version must be {VERSION}", doc.get("version"))
    profile_name = doc.get("profile")
    if not isinstance(profile_name, str) or profile_name not in PROFILES:
        raise DocumentError(f"known defects: profile must be one of {', '.join(PROFILES)}", profile_name)
    entries = doc.get("defects")
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise DocumentError("known defects: `defects` must be a list", type(entries).__name__)
    profile = PROFILES[profile_name]
    defects: list[KnownDefect] = []
    for index, entry in enumerate(entries):
        where = f"known defects, entry {index + 1}"
        if not isinstance(entry, Mapping):
            raise DocumentError(f"{where}: must be a mapping", entry)
        unknown = sorted(map(str, set(entry) - ENTRY_KEYS))
        if unknown:
            raise DocumentError(f"{where}: unknown keys {unknown}", unknown)
        scenario = _text(entry, "scenario", where)
        module, sep, test = scenario.partition("::")
        if not sep or not module.endswith(SCENARIO_SUFFIXES) or not test or "::" in test:
            raise DocumentError(f"{where}: scenario must be MODULE.py::TEST or FILE.yaml::SCENARIO", scenario)
        if Path(module).is_absolute() or ".." in Path(module).parts:
            raise DocumentError(f"{where}: the module must be inside the suite", module)
        quirk = _text(entry, "quirk", where)
        _check_quirk(quirk, profile, where)
        defect = KnownDefect(Path(module).as_posix(), test, quirk, _text(entry, "spec", where), _text(entry, "why", where))
        if any(d.scenario == defect.scenario for d in defects):
            raise DocumentError(f"{where}: {scenario} is listed twice", scenario)
        defects.append(defect)
    return KnownDefects(profile_name, tuple(defects), base)


def load_known_defects(path: Path) -> KnownDefects:
    """The file's known defects; each module it names must exist next to it (DocumentError if not)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DocumentError(f"known defects: cannot read {path}: {error.strerror}", str(path)) from None
    known = parse_known_defects(data, path.parent)
    for defect in known.defects:
        if not (path.parent / defect.module).is_file():
            raise DocumentError(f"known defects: {defect.scenario}: no module {defect.module} in {path.parent}",
                                defect.module)
    return known


def mark_known_defects(items: Iterable[pytest.Item], known: KnownDefects, profile: str) -> list[pytest.Item]:
    """Mark the items of `known` xfail(strict=True) when running `profile`; the marked items.

    Checks that every defect of a module that was collected names a collected test (call it before
    any deselection), so a renamed scenario is an error rather than a defect that silently vanishes.
    """
    items = list(items)
    if profile != known.profile:
        return []
    marked: list[pytest.Item] = []
    matched: set[str] = set()
    collected_modules: set[str] = set()
    for item in items:
        module = _relative(item.path, known.base)
        if module is None:
            continue
        collected_modules.add(module)
        for defect in known.for_item(item.path, item.name):
            matched.add(defect.scenario)
            item.add_marker(pytest.mark.xfail(strict=True, reason=defect.reason(profile)))
            marked.append(item)
    stale = [d.scenario for d in known.defects if d.module in collected_modules and d.scenario not in matched]
    if stale:
        raise DocumentError(f"known defects name scenarios that do not exist: {', '.join(stale)}", stale)
    return marked
