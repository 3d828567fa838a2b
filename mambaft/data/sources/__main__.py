"""python -m mambaft.data.sources: print the table of sources."""
from mambaft.data.sources import describe

print(describe())
