"""HL7 v2 feeds: framing, headers, acknowledgements, parsing, and the adapter that maps
messages by `mappings/hl7v2/`."""

from adapters.hl7v2.adapter import Hl7v2Adapter

__all__ = ["Hl7v2Adapter"]
