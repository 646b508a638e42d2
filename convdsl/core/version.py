"""The package version, in core so that every stage (the cache key among them) can read it."""

VERSION = "0.1.0"
