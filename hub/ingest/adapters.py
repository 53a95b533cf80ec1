"""Feed adapters: the protocol every feed kind implements, and the registry that finds them.

An adapter only knows its wire format: how a stream splits into units (one
message, one CSV row), and how a unit's raw bytes parse into a record (field
name -> text). Meaning comes from the mapping files; writing goes through the
same repository the REST API uses.

Built-in adapters are named lazily as "module:Class"; third-party ones
register through the entry-point group `fhir_hub.adapters`. Every adapter
found is enabled unless the settings list the enabled ones (HUB_ADAPTERS); a
listed name that is unknown, or an adapter that fails to load, stops start-up
with a message that names it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

from hub.ingest.mapping import Mapped, Mapper, Mapping_, discover
from hub.store.messages import Unit as Unit  # units are stored as adapters frame them

BUILTINS: dict[str, str] = {
    "csv": "adapters.csv:CsvAdapter",
    "hl7v2": "adapters.hl7v2.adapter:Hl7v2Adapter",
}
ENTRY_POINT_GROUP = "fhir_hub.adapters"


@runtime_checkable
class Adapter(Protocol):
    name: str
    field_label: str  # what errors call a source field: "column", "field", ...
    content_types: tuple[str, ...]
    # Mapping files an adapter package ships (besides the hub's mappings/ folder).
    mappings_dir: Path | None

    def split(self, stream: IO[bytes], origin: str, mapping: str) -> Iterator[Unit]:
        """Frame a stream into units, without interpreting them."""

    def parse(self, raw: bytes) -> Mapping[str, str]:
        """One unit's raw bytes as a record of field name -> text."""

    def map(self, record: Mapping[str, str], mapper: Mapper) -> Mapped:
        """The record as FHIR resources; most adapters just call `mapper.map`."""


class UnknownAdapter(LookupError):
    def __init__(self, name: str, known: Iterable[str]) -> None:
        super().__init__(
            f"unknown adapter '{name}'; known adapters: {', '.join(sorted(known)) or 'none'}"
        )
        self.name = name


class AdapterNotLoaded(UnknownAdapter):
    """An adapter that is registered but whose code cannot be imported or built."""

    def __init__(self, name: str, target: str, error: Exception) -> None:
        LookupError.__init__(
            self, f"adapter '{name}' ({target}) cannot be loaded: {type(error).__name__}: {error}"
        )
        self.name = name


class AdapterDisabled(UnknownAdapter):
    def __init__(self, name: str, enabled: Iterable[str]) -> None:
        LookupError.__init__(
            self,
            f"adapter '{name}' is installed but not enabled; HUB_ADAPTERS lists "
            f"{', '.join(sorted(enabled)) or 'none'}",
        )
        self.name = name


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    origin: str  # "built-in" or the distribution that registered it
    target: str


class AdapterRegistry:
    """Adapters by name, loaded on first use; `enabled` are those the hub may use."""

    def __init__(
        self, available: Mapping[str, AdapterInfo], enabled: Iterable[str] | None = None
    ) -> None:
        self.available = dict(available)
        self.enabled = sorted(self.available) if enabled is None else list(enabled)
        self._loaded: dict[str, Adapter] = {}

    @classmethod
    def discover(cls, enabled: Iterable[str] | None = None) -> AdapterRegistry:
        """Built-ins and entry points; every one enabled unless `enabled` names them."""
        available = {n: AdapterInfo(n, "built-in", t) for n, t in BUILTINS.items()}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "entry point"
            available[ep.name] = AdapterInfo(ep.name, dist, ep.value)
        registry = cls(available, enabled)
        for name in registry.enabled:
            registry.get(name)  # fail now, naming it, rather than at the first message
        return registry

    def get(self, name: str) -> Adapter:
        if name in self._loaded:
            return self._loaded[name]
        info = self.available.get(name)
        if info is None:
            raise UnknownAdapter(name, self.available)
        if name not in self.enabled:
            raise AdapterDisabled(name, self.enabled)
        module_name, _, attr = info.target.partition(":")
        try:
            factory: Any = getattr(importlib.import_module(module_name), attr)
            adapter = factory()
        except Exception as e:  # a broken plug-in: say which one, and why
            raise AdapterNotLoaded(name, info.target, e) from e
        if not isinstance(adapter, Adapter):
            raise TypeError(f"adapter '{name}' ({info.target}) does not implement the protocol")
        self._loaded[name] = adapter
        return adapter

    def names(self) -> list[str]:
        return sorted(self.available)

    def mapping_roots(self, hub_mappings: Path) -> list[Path]:
        """The hub's mappings folder, then the folder each enabled adapter package ships."""
        roots = [hub_mappings]
        for name in self.enabled:
            shipped = self.get(name).mappings_dir
            if shipped is not None and shipped not in roots:
                roots.append(shipped)
        return roots

    def mappings(self, hub_mappings: Path) -> dict[str, Mapping_]:
        """Every mapping by name; the hub's folder wins over an adapter's on a name clash."""
        found: dict[str, Mapping_] = {}
        for root in reversed(self.mapping_roots(hub_mappings)):
            found.update(discover(root))
        return found
