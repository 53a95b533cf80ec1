"""Search parameters as data: the registries built from stored SearchParameter resources,
their states, and the reindex jobs that bring a new parameter's index up to date.

Above the store (they read and write through the repository) and below the interactions
(which ask for the current registry and start jobs).
"""
