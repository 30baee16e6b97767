"""Search: native kernels, index presets and build, search backends and the query engine."""
