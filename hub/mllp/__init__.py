"""The MLLP listener: HL7 v2 senders connect here (an entry point, beside hub.api)."""
