"""The corpus on disk: registry, parts and attribute sets, crash-safe writes, verification."""
