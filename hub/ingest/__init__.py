"""Feeds: the message store, adapters and mappings, the pipeline and its dispatchers."""
