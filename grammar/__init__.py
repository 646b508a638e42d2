"""The .conv grammar, shipped as package data (loaded with Lark.open_from_package)."""
