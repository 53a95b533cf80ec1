"""`hub adapters new`: a working adapter package to start a new feed from.

The package is generated from `templates/adapter/` (file and folder names
`_package_`, `_name_`, `_mapping_` and `{{…}}` placeholders in the text).
Its golden expected output is not a template: it is produced by running the
new adapter and mapping on the sample input, so the package's own test
passes from the first run.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from hub.ingest import golden
from hub.ingest.adapters import Adapter

TEMPLATE = Path(__file__).resolve().parent / "templates" / "adapter"
NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")


@dataclass(frozen=True)
class Names:
    name: str  # the adapter's name: `hub ingest --adapter NAME`, the entry point's name
    dist: str  # the distribution: fhir-hub-NAME
    package: str  # the import package: fhir_hub_NAME
    cls: str  # the adapter class: NameAdapter
    mapping: str  # the example mapping: NAME-example

    @classmethod
    def of(cls, name: str) -> Names:
        if not NAME.match(name) or len(name) > 40:
            raise ValueError(
                f"'{name}' is not a usable adapter name: lower-case letters and digits, "
                "words joined by '-' or '_', starting with a letter"
            )
        words = re.split(r"[-_]", name)
        return cls(
            name=name,
            dist=f"fhir-hub-{name.replace('_', '-')}",
            package=f"fhir_hub_{name.replace('-', '_')}",
            cls="".join(w.capitalize() for w in words) + "Adapter",
            mapping=f"{name}-example",
        )

    def fill(self, text: str) -> str:
        for key in ("name", "dist", "package", "cls", "mapping"):
            text = text.replace("{{" + key + "}}", getattr(self, key))
        return text

    def path(self, relative: Path) -> Path:
        parts = [
            part.replace("_package_", self.package)
            .replace("_name_", self.name)
            .replace("_mapping_", self.mapping)
            for part in relative.parts
        ]
        return Path(*parts).with_name(parts[-1].removesuffix(".tmpl"))


def create(name: str, target: Path, taken: list[str] | None = None) -> tuple[Names, list[Path]]:
    """Write the package into `target` (absent or empty) and its golden expected output.

    `taken`: the adapter names in use, which the new one must not shadow.
    """
    names = Names.of(name)
    if taken and name in taken:
        raise ValueError(f"an adapter named '{name}' exists already (taken: {', '.join(taken)})")
    if importlib.util.find_spec(names.package) is not None:
        raise ValueError(f"a package named {names.package} is installed already")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ValueError(f"{target} exists and is not an empty folder")
    written = []
    for source in sorted(TEMPLATE.rglob("*.tmpl")):
        path = target / names.path(source.relative_to(TEMPLATE))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(names.fill(source.read_text(encoding="utf-8")), encoding="utf-8")
        written.append(path)
    adapter = _load(names, target)
    assert adapter.mappings_dir is not None
    results = golden.run([adapter.mappings_dir], {name: adapter}, update=True)
    failed = [r for r in results if not r.ok]
    if failed or not results:
        raise RuntimeError(
            "the generated example does not run:\n" + "\n".join(r.report() for r in failed)
        )
    written += [r.case.expected for r in results]
    return names, written


def _load(names: Names, target: Path) -> Adapter:
    """The new adapter, imported from `target` without leaving it importable afterwards."""
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(names.package)
        adapter: Adapter = getattr(module, names.cls)()
        return adapter
    finally:
        sys.path.remove(str(target))
        for loaded in [m for m in sys.modules if m.split(".")[0] == names.package]:
            del sys.modules[loaded]
