"""The cache volume: layout, manifest, environment key."""
