"""HL7 v2 feeds: framing, headers, acknowledgements, parsing and the adapter."""
