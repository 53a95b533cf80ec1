"""The HL7 v2 adapter: messages parsed by `parse`, mapped by `mappings/hl7v2/`."""

from adapters.hl7v2.adapter import Hl7v2Adapter

__all__ = ["Hl7v2Adapter"]
