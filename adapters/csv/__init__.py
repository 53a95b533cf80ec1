"""The CSV adapter: one message per row, columns mapped by `mappings/csv/*.yaml`."""

from adapters.csv.adapter import CsvAdapter

__all__ = ["CsvAdapter"]
