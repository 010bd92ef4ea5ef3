"""CLI command modules: each defines `register(app)` and keeps heavy imports inside its functions."""
