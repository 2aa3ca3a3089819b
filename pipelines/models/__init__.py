"""Model families, one folder each; `registry.FAMILIES` lists them explicitly."""
