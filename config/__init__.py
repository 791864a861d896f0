"""Option tables: mode and netnum codes, dataset option modules, class tables."""
