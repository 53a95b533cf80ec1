"""Build `tests/data/r4-examples.tar.xz`: a sample of the official FHIR R4 (4.0.1) examples.

Source: the npm package `hl7.fhir.r4.examples` (CC0), the examples of the specification:

    npm pack hl7.fhir.r4.examples@4.0.1
    .venv/bin/python tools/r4_examples.py hl7.fhir.r4.examples-4.0.1.tgz

The sample keeps every resource type: up to `--per-type` examples of each, in name order,
skipping files larger than `--max-bytes` unless a type has no smaller one, and fewer of the
conformance resources (StructureDefinition, ValueSet, CodeSystem, SearchParameter...) that
make up most of the package. tests/test_r4_examples.py reads the sample, or the whole package when
HUB_R4_EXAMPLES names it.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "r4-examples.tar.xz"
CONFORMANCE = {
    "CapabilityStatement", "CodeSystem", "CompartmentDefinition", "ConceptMap",
    "GraphDefinition", "ImplementationGuide", "MessageDefinition", "NamingSystem",
    "OperationDefinition", "SearchParameter", "StructureDefinition", "StructureMap",
    "TerminologyCapabilities", "ValueSet",
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="hl7.fhir.r4.examples-4.0.1.tgz")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--per-type", type=int, default=8)
    parser.add_argument("--conformance-per-type", type=int, default=3)
    parser.add_argument("--max-bytes", type=int, default=100_000)
    args = parser.parse_args()
    by_type: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    with tarfile.open(args.source) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            name = member.name.rsplit("/", 1)[-1]
            handle = tar.extractfile(member) if member.isfile() else None
            if handle is None or not name.endswith(".json") or name == "package.json":
                continue
            data = handle.read()
            resource = json.loads(data)
            if isinstance(resource, dict) and "resourceType" in resource:
                by_type[resource["resourceType"]].append((name, data))
    chosen: list[tuple[str, bytes]] = []
    for resource_type, files in sorted(by_type.items()):
        limit = args.conformance_per_type if resource_type in CONFORMANCE else args.per_type
        small = [f for f in files if len(f[1]) <= args.max_bytes]
        chosen.extend(small[:limit] or [min(files, key=lambda f: len(f[1]))])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(args.out, "w:xz", preset=9) as out:
        for name, data in chosen:
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    print(f"{args.out}: {len(chosen)} examples of {len(by_type)} resource types")


if __name__ == "__main__":
    main()
