"""Storage: embedding shard sets, the MS MARCO file formats, random access to passage text."""
