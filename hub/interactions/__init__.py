"""FHIR interactions: one module each, taking a `Request` and answering a `Result`."""
