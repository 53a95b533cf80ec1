"""Search in SQL: the conditions of each parameter type, the query built from a parsed
search, and the engine that runs it on a transaction (see docs/search.md)."""
