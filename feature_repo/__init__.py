"""Feast definitions of shoplake's features; ``shoplake.feature_store`` applies them (``shoplake publish``)."""
