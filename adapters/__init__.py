"""Built-in feed adapters, one package per feed kind."""
