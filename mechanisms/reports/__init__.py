"""Reports from claim results (`report`, `figures`) and the regression check between two of them (`compare`)."""
