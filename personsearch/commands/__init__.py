"""One module per CLI command (see personsearch.cli). Keep module-level imports light."""
