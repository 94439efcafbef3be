"""`loadgen search`: the highest load a device carries within each goal's loss (RFC 9971)."""
