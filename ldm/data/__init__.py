"""Data stages: validate (manifest + quality suite), prepare (shards), and the bundled sample."""
