"""S3 locations, the ranged-GET engine, its sinks (cache file, in-order stream) and the cache."""
