"""fhir-hub: a FHIR R4 interoperability hub."""

__version__ = "0.1.0"
